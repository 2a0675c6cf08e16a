//! Divergence capture: for each divergence, the primary and secondary packets (and a few
//! packets of context from the flow) go to a pcapng file, with the reason and the flow in each
//! packet's comment, so an operator opens it in Wireshark/tshark and sees why the VMs diverged.
//! Interface 0 is the primary VM's output, interface 1 the secondary's. Files rotate after a size
//! bound and at most `max_files` are kept (the oldest are deleted).

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;
use serde::Serialize;

use crate::control::EventSide as Side;

/// File name prefix; files are `colo-divergence-<unix secs>-<seq>.pcapng`.
pub const FILE_PREFIX: &str = "colo-divergence-";

/// Capture settings.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// Directory for the files (created if absent).
    pub dir: PathBuf,
    /// Start a new file once the current one reaches this size.
    pub max_file_bytes: u64,
    /// Keep at most this many files.
    pub max_files: u32,
    /// Context packets written per divergence (more are ignored).
    pub context_packets: u32,
}

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedPacket {
    /// Which VM sent it.
    pub side: Side,
    /// When (data-plane clock, same as `now_ns` given to [`CaptureWriter::write`]).
    pub time_ns: u64,
    /// Ethernet frame (may be truncated).
    pub data: Vec<u8>,
    /// Length on the wire.
    pub orig_len: u32,
}

/// A divergence with its packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DivergenceCapture {
    /// Flow, as `FlowKey` prints it.
    pub flow: String,
    /// Why.
    pub reason: String,
    /// TCP sequence range concerned, when known.
    pub seq_range: Option<(u32, u32)>,
    /// The primary's packet, if there is one.
    pub primary: Option<CapturedPacket>,
    /// The secondary's packet, if there is one.
    pub secondary: Option<CapturedPacket>,
    /// Earlier packets of the same flow, oldest first.
    pub context: Vec<CapturedPacket>,
}

/// Capture counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CaptureStats {
    /// Divergences written.
    pub divergences: u64,
    /// Packets written.
    pub packets: u64,
    /// Bytes written (all files).
    pub bytes: u64,
    /// Files started.
    pub files: u64,
    /// Old files deleted by rotation.
    pub files_deleted: u64,
    /// Write errors (the divergence is lost; capture continues with a new file).
    pub errors: u64,
    /// The last write error's text (e.g. a file name that already existed).
    pub last_error: Option<String>,
    /// File names skipped because something (a file, a symlink) already existed there.
    pub names_taken: u64,
    /// File being written.
    pub current: Option<PathBuf>,
}

struct Open {
    w: PcapNgWriter<BufWriter<File>>,
    path: PathBuf,
    bytes: u64,
}

/// Writes divergences to rotating pcapng files.
pub struct CaptureWriter {
    cfg: CaptureConfig,
    open: Option<Open>,
    /// Our files, oldest first (including ones found at start-up).
    files: Vec<PathBuf>,
    seq: u64,
    stats: CaptureStats,
}

fn side_iface(side: Side) -> u32 {
    match side {
        Side::Secondary => 1,
        Side::Primary | Side::Both => 0,
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Primary => "primary",
        Side::Secondary => "secondary",
        Side::Both => "both",
    }
}

impl CaptureWriter {
    /// Prepare the directory; files are created on the first divergence.
    pub fn new(cfg: CaptureConfig) -> io::Result<CaptureWriter> {
        std::fs::create_dir_all(&cfg.dir)?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&cfg.dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| is_ours(p))
            .collect();
        files.sort();
        Ok(CaptureWriter {
            cfg,
            open: None,
            files,
            seq: 0,
            stats: CaptureStats::default(),
        })
    }

    /// Counters.
    pub fn stats(&self) -> CaptureStats {
        CaptureStats {
            current: self.open.as_ref().map(|o| o.path.clone()),
            ..self.stats.clone()
        }
    }

    /// Files kept, oldest first.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Write one divergence and flush it to the file. `now_ns` is the data-plane clock now; it
    /// maps packet times to wall-clock time.
    pub fn write(&mut self, d: &DivergenceCapture, now_ns: u64) -> io::Result<()> {
        let r = self.try_write(d, now_ns);
        if let Err(e) = &r {
            self.stats.errors += 1;
            self.stats.last_error = Some(e.to_string());
            // Start afresh next time rather than append to a file in an unknown state.
            self.open = None;
        }
        r
    }

    /// Close the current file (the next divergence starts a new one).
    pub fn close(&mut self) -> io::Result<()> {
        if let Some(mut o) = self.open.take() {
            o.w.get_mut().flush()?;
        }
        Ok(())
    }

    fn try_write(&mut self, d: &DivergenceCapture, now_ns: u64) -> io::Result<()> {
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.bytes >= self.cfg.max_file_bytes)
        {
            self.close()?;
        }
        if self.open.is_none() {
            self.start_file()?;
        }
        let wall_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let to_wall =
            |t: u64| wall_now.saturating_sub(Duration::from_nanos(now_ns.saturating_sub(t)));
        let n = self.stats.divergences + 1;
        let seq = d
            .seq_range
            .map(|(a, b)| format!(" seq=[{a},{b})"))
            .unwrap_or_default();
        let head = format!(
            "colo divergence #{n}: reason={} flow={}{seq}",
            d.reason, d.flow
        );
        let mut pkts: Vec<(&CapturedPacket, String)> = Vec::new();
        for p in d.context.iter().take(self.cfg.context_packets as usize) {
            pkts.push((p, format!("context ({}) for {head}", side_name(p.side))));
        }
        if let Some(p) = &d.primary {
            pkts.push((p, format!("{head} [primary packet]")));
        }
        if let Some(p) = &d.secondary {
            pkts.push((p, format!("{head} [secondary packet]")));
        }
        let Some(o) = self.open.as_mut() else {
            return Err(io::Error::other("capture file not open"));
        };
        for (p, comment) in pkts {
            let epb = EnhancedPacketBlock {
                interface_id: side_iface(p.side),
                timestamp: to_wall(p.time_ns),
                original_len: p.orig_len.max(p.data.len() as u32),
                data: Cow::Borrowed(&p.data),
                options: vec![EnhancedPacketOption::Comment(Cow::Owned(comment))],
            };
            let n = o.w.write_pcapng_block(epb).map_err(io::Error::other)? as u64;
            o.bytes += n;
            self.stats.bytes += n;
            self.stats.packets += 1;
        }
        o.w.get_mut().flush()?;
        self.stats.divergences += 1;
        Ok(())
    }

    fn start_file(&mut self) -> io::Result<()> {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let (file, path) = self.create_next(secs)?;
        let file = BufWriter::new(file);
        let mut w = PcapNgWriter::new(file).map_err(io::Error::other)?;
        let mut bytes = 28u64; // section header block
        for name in ["primary", "secondary"] {
            let idb = InterfaceDescriptionBlock {
                linktype: DataLink::ETHERNET,
                snaplen: 0xFFFF,
                options: vec![
                    InterfaceDescriptionOption::IfName(Cow::Borrowed(name)),
                    // EPB timestamps are written in nanoseconds.
                    InterfaceDescriptionOption::IfTsResol(9),
                ],
            };
            bytes += w.write_pcapng_block(idb).map_err(io::Error::other)? as u64;
        }
        self.files.push(path.clone());
        self.stats.files += 1;
        self.stats.bytes += bytes;
        self.open = Some(Open { w, path, bytes });
        while self.files.len() > self.cfg.max_files.max(1) as usize {
            let old = self.files.remove(0);
            if std::fs::remove_file(&old).is_ok() {
                self.stats.files_deleted += 1;
            }
        }
        Ok(())
    }
}

/// Names tried per new file before giving up (each taken name is skipped, never reused).
const CREATE_ATTEMPTS: u32 = 16;

impl CaptureWriter {
    /// Create the next file name that does not exist yet. `create_new` (O_EXCL) with
    /// O_NOFOLLOW: an existing file or a symlink planted at the name is never opened, followed
    /// or truncated; the name is skipped (counted) and the next sequence number tried.
    fn create_next(&mut self, secs: u64) -> io::Result<(File, PathBuf)> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut last = None;
        for _ in 0..CREATE_ATTEMPTS {
            self.seq += 1;
            let path = self
                .cfg
                .dir
                .join(format!("{FILE_PREFIX}{secs:010}-{:06}.pcapng", self.seq));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .mode(0o640)
                .open(&path)
            {
                Ok(f) => return Ok((f, path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    self.stats.names_taken += 1;
                    last = Some(path);
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("capture file {}: {e}", path.display()),
                    ))
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "capture file {}: already exists (as do the {} names before it); \
                 refusing to overwrite or follow it",
                last.unwrap_or_default().display(),
                CREATE_ATTEMPTS - 1
            ),
        ))
    }
}

fn is_ours(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(FILE_PREFIX) && n.ends_with(".pcapng"))
}
