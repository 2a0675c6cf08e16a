//! Control-socket protocol: newline-delimited JSON. A request is one object with a `"cmd"` tag
//! and an optional `"token"`; the reply is `{"ok":true,"result":...}` or
//! `{"ok":false,"error":"..."}`. After `{"cmd":"events"}` is accepted the connection carries one
//! [`super::Event`] per line until the client closes it.
//!
//! Parsing is total: any byte string yields either a [`Request`] or an error message.

use serde::{Deserialize, Serialize};

use super::plane::{BypassOp, BypassSpec};

/// Longest request line accepted (bytes, without the newline). Longer → error reply and close.
pub const MAX_LINE: usize = 64 * 1024;

/// Default number of flows `flows` returns.
pub const DEFAULT_TOP_FLOWS: usize = 20;

/// Most flows one `flows` request may ask for.
pub const MAX_TOP_FLOWS: usize = 10_000;

/// `capture` operation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CaptureOp {
    /// Start writing diverging packets.
    Start,
    /// Stop.
    Stop,
}

fn default_top() -> usize {
    DEFAULT_TOP_FLOWS
}

fn default_reason() -> String {
    "manual".to_string()
}

/// One control command.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Command {
    /// Counters: data plane, checkpoint coordinator, sinks, control server, capture.
    Stats,
    /// Top flows by traffic, with state.
    Flows {
        /// How many.
        #[serde(default = "default_top")]
        top: usize,
    },
    /// Subscribe this connection to the event stream.
    Events,
    /// Request a checkpoint by hand (goes through the coordinator like a divergence).
    Checkpoint {
        /// Reason recorded with the request.
        #[serde(default = "default_reason")]
        reason: String,
    },
    /// The COLO frame finished a checkpoint.
    CheckpointDone,
    /// Fail over.
    Failover,
    /// Bypass rules: `{"cmd":"bypass","op":"add"|"del"|"list",...}`.
    Bypass(BypassOp),
    /// Divergence capture on or off: `{"cmd":"capture","op":"start"|"stop"}`.
    Capture {
        /// Start or stop.
        op: CaptureOp,
    },
    /// Stop the proxy.
    Shutdown,
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The command.
    pub cmd: Command,
    /// The token the client sent, if any.
    pub token: Option<String>,
}

impl Request {
    /// Parse one line (without its newline). Never panics.
    pub fn parse(line: &[u8]) -> Result<Request, String> {
        if line.len() > MAX_LINE {
            return Err(format!("request longer than {MAX_LINE} bytes"));
        }
        let mut v: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| format!("malformed JSON: {e}"))?;
        let obj = v
            .as_object_mut()
            .ok_or_else(|| "request must be a JSON object".to_string())?;
        let token = match obj.remove("token") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(_) => return Err("token must be a string".into()),
        };
        if !obj.contains_key("cmd") {
            return Err("missing \"cmd\"".into());
        }
        let cmd: Command = serde_json::from_value(v).map_err(|e| format!("bad request: {e}"))?;
        if let Command::Flows { top } = cmd {
            if top > MAX_TOP_FLOWS {
                return Err(format!("flows: top {top} exceeds {MAX_TOP_FLOWS}"));
            }
        }
        Ok(Request { cmd, token })
    }

    /// One JSON line (no newline).
    pub fn to_json_line(&self) -> String {
        let mut v = serde_json::to_value(&self.cmd).unwrap_or(serde_json::Value::Null);
        if let (Some(t), Some(o)) = (&self.token, v.as_object_mut()) {
            o.insert("token".into(), serde_json::Value::String(t.clone()));
        }
        v.to_string()
    }

    /// Build a request from `ctl` words, e.g. `["bypass", "add", "tcp", "22"]`.
    pub fn from_words(words: &[String], token: Option<String>) -> Result<Request, String> {
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        let cmd = match w.as_slice() {
            ["stats"] => Command::Stats,
            ["flows"] => Command::Flows {
                top: DEFAULT_TOP_FLOWS,
            },
            ["flows", n] => Command::Flows {
                top: n
                    .parse()
                    .map_err(|_| format!("flows: {n:?} is not a count"))?,
            },
            ["events"] => Command::Events,
            ["checkpoint"] => Command::Checkpoint {
                reason: default_reason(),
            },
            ["checkpoint", reason] => Command::Checkpoint {
                reason: reason.to_string(),
            },
            ["checkpoint-done"] => Command::CheckpointDone,
            ["failover"] => Command::Failover,
            ["bypass", "list"] => Command::Bypass(BypassOp::List),
            ["bypass", "del", i] => Command::Bypass(BypassOp::Del {
                index: i
                    .parse()
                    .map_err(|_| format!("bypass del: {i:?} is not an index"))?,
            }),
            ["bypass", "add", proto, rest @ ..] if rest.len() <= 2 => {
                let mut spec = BypassSpec {
                    proto: proto.to_string(),
                    ports: None,
                    prefix: None,
                };
                for r in rest {
                    // A prefix always has a '/'; ports never do.
                    let slot = if r.contains('/') {
                        &mut spec.prefix
                    } else {
                        &mut spec.ports
                    };
                    if slot.replace(r.to_string()).is_some() {
                        return Err(format!("bypass add: {r:?} given twice"));
                    }
                }
                Command::Bypass(BypassOp::Add(spec))
            }
            ["capture", "start"] => Command::Capture {
                op: CaptureOp::Start,
            },
            ["capture", "stop"] => Command::Capture {
                op: CaptureOp::Stop,
            },
            ["shutdown"] => Command::Shutdown,
            [] => return Err("no command given".into()),
            _ => {
                return Err(format!(
                    "unknown command or arguments: {}\n{USAGE}",
                    words.join(" ")
                ))
            }
        };
        let req = Request { cmd, token };
        if let Command::Flows { top } = req.cmd {
            if top > MAX_TOP_FLOWS {
                return Err(format!("flows: top {top} exceeds {MAX_TOP_FLOWS}"));
            }
        }
        Ok(req)
    }
}

/// The command words `ctl` accepts.
pub const USAGE: &str = "commands: stats | flows [N] | events | checkpoint [REASON] | \
checkpoint-done | failover | bypass add PROTO [PORTS] [PREFIX] | bypass del INDEX | \
bypass list | capture start|stop | shutdown";

/// A reply line.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Reply {
    /// Whether the command succeeded.
    pub ok: bool,
    /// The result, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The error, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    /// Success with a result.
    pub fn ok(result: serde_json::Value) -> Reply {
        Reply {
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    /// Failure.
    pub fn err(msg: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            result: None,
            error: Some(msg.into()),
        }
    }

    /// One JSON line (no newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"ok":false,"error":"unserialisable reply"}"#.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_every_command() {
        let cases: &[(&str, Command)] = &[
            (r#"{"cmd":"stats"}"#, Command::Stats),
            (
                r#"{"cmd":"flows"}"#,
                Command::Flows {
                    top: DEFAULT_TOP_FLOWS,
                },
            ),
            (r#"{"cmd":"flows","top":5}"#, Command::Flows { top: 5 }),
            (r#"{"cmd":"events"}"#, Command::Events),
            (
                r#"{"cmd":"checkpoint"}"#,
                Command::Checkpoint {
                    reason: "manual".into(),
                },
            ),
            (r#"{"cmd":"checkpoint-done"}"#, Command::CheckpointDone),
            (r#"{"cmd":"failover"}"#, Command::Failover),
            (
                r#"{"cmd":"bypass","op":"list"}"#,
                Command::Bypass(BypassOp::List),
            ),
            (
                r#"{"cmd":"bypass","op":"del","index":3}"#,
                Command::Bypass(BypassOp::Del { index: 3 }),
            ),
            (
                r#"{"cmd":"bypass","op":"add","proto":"tcp","ports":"22"}"#,
                Command::Bypass(BypassOp::Add(BypassSpec {
                    proto: "tcp".into(),
                    ports: Some("22".into()),
                    prefix: None,
                })),
            ),
            (
                r#"{"cmd":"capture","op":"start"}"#,
                Command::Capture {
                    op: CaptureOp::Start,
                },
            ),
            (
                r#"{"cmd":"capture","op":"stop"}"#,
                Command::Capture {
                    op: CaptureOp::Stop,
                },
            ),
            (r#"{"cmd":"shutdown"}"#, Command::Shutdown),
        ];
        for (line, want) in cases {
            let r = Request::parse(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(&r.cmd, want, "{line}");
            assert_eq!(r.token, None);
            // What we print we parse back.
            assert_eq!(Request::parse(r.to_json_line().as_bytes()).unwrap(), r);
        }
    }

    #[test]
    fn token_is_separated() {
        let r = Request::parse(br#"{"cmd":"stats","token":"s3cret"}"#).unwrap();
        assert_eq!(r.cmd, Command::Stats);
        assert_eq!(r.token.as_deref(), Some("s3cret"));
        assert!(Request::parse(br#"{"cmd":"stats","token":5}"#).is_err());
    }

    #[test]
    fn rejects_bad_requests_with_a_message() {
        for bad in [
            &b"not json"[..],
            b"[1,2]",
            b"{}",
            br#"{"cmd":"frobnicate"}"#,
            br#"{"cmd":"flows","top":-1}"#,
            br#"{"cmd":"flows","top":99999999}"#,
            br#"{"cmd":"capture","op":"sideways"}"#,
            br#"{"cmd":"bypass","op":"del"}"#,
            b"\xff\xfe",
        ] {
            let e = Request::parse(bad).unwrap_err();
            assert!(!e.is_empty());
        }
        assert!(Request::parse(br#"{"cmd":"frobnicate"}"#)
            .unwrap_err()
            .contains("frobnicate"));
        let long = vec![b' '; MAX_LINE + 1];
        assert!(Request::parse(&long).unwrap_err().contains("longer"));
    }

    #[test]
    fn words_build_requests() {
        let r = Request::from_words(&words("bypass add udp 5000-5100 10.0.0.0/8"), None).unwrap();
        assert_eq!(
            r.cmd,
            Command::Bypass(BypassOp::Add(BypassSpec {
                proto: "udp".into(),
                ports: Some("5000-5100".into()),
                prefix: Some("10.0.0.0/8".into()),
            }))
        );
        assert_eq!(
            Request::from_words(&words("flows 7"), None).unwrap().cmd,
            Command::Flows { top: 7 }
        );
        let t = Request::from_words(&words("stats"), Some("t".into())).unwrap();
        assert!(t.to_json_line().contains(r#""token":"t""#));
        for bad in [
            "",
            "flows x",
            "bypass del -1",
            "capture maybe",
            "nope",
            "bypass add tcp 1 2",
        ] {
            assert!(Request::from_words(&words(bad), None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reply_shapes() {
        assert_eq!(
            Reply::ok(serde_json::json!(1)).to_json_line(),
            r#"{"ok":true,"result":1}"#
        );
        assert_eq!(
            Reply::err("no").to_json_line(),
            r#"{"ok":false,"error":"no"}"#
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Request::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_near_json(s in r#"\{"cmd":"[a-z-]{0,16}"(,"[a-z]{1,6}":("[a-z0-9/.-]{0,8}"|-?[0-9]{1,20}|null|\[\]))*\}"#) {
            let _ = Request::parse(s.as_bytes());
        }
    }
}
