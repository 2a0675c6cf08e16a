//! The control protocol: any line parses to a request or a clear error, never a panic; a
//! request survives its own encoding (`to_json_line` → `parse`). The same bytes as `ctl`
//! words (split on whitespace) never panic either, and what they build encodes and parses
//! back to the same request. Input: the line's bytes (seeds: the tests' requests).
#![no_main]

use colo_proxy::control::proto::{Reply, Request};
use libfuzzer_sys::fuzz_target;

fn round_trip(r: &Request) {
    let line = r.to_json_line();
    let back = Request::parse(line.trim_end().as_bytes()).expect("an encoded request parses");
    assert_eq!(&back, r);
}

fuzz_target!(|line: &[u8]| {
    if let Ok(r) = Request::parse(line) {
        round_trip(&r);
    }
    let text = String::from_utf8_lossy(line);
    let words: Vec<String> = text.split_whitespace().map(String::from).collect();
    let token = words.first().filter(|w| w.starts_with("tok")).cloned();
    if let Ok(r) = Request::from_words(&words, token) {
        round_trip(&r);
    }
    let _ = Reply::err(text).to_json_line();
});
