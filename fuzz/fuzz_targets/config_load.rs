//! The config loader on arbitrary text: a validated config or a clear error (with at least
//! one message), never a panic; a config that loads yields EAL arguments with or without
//! hugepages, and its lcore check against them does not panic.
#![no_main]

use colo_proxy::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml_str(text) {
        Ok(cfg) => {
            for huge in [false, true] {
                let args = cfg.eal_args_with_probe(&[], || huge);
                assert!(!args.is_empty());
                let _ = cfg.check_lcores(&args);
            }
            let _ = cfg.lcores.used();
        }
        Err(e) => assert!(!e.messages().is_empty(), "error without a message: {e:?}"),
    }
});
