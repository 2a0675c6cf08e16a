//! The control protocol: any line parses to a request or a clear error, never a panic; a
//! request survives its own encoding (`to_json_line` → `parse`); the CLI word form never
//! panics either, and what it accepts encodes and parses back to the same request.
#![no_main]

use arbitrary::Arbitrary;
use colo_proxy::control::proto::{Reply, Request};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    line: Vec<u8>,
    words: Vec<String>,
    token: Option<String>,
}

fn round_trip(r: &Request) {
    let line = r.to_json_line();
    let line = line.trim_end_matches('\n');
    let back = Request::parse(line.as_bytes()).expect("an encoded request parses");
    assert_eq!(&back, r);
}

fuzz_target!(|i: Input| {
    if let Ok(r) = Request::parse(&i.line) {
        round_trip(&r);
    }
    let words: Vec<String> = i.words.into_iter().take(8).collect();
    if let Ok(r) = Request::from_words(&words, i.token.clone()) {
        round_trip(&r);
    }
    let _ = Reply::err(String::from_utf8_lossy(&i.line)).to_json_line();
});
