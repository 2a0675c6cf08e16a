//! `colo-proxy`: the binary is the library's command line ([`colo_proxy::cli`]).

fn main() -> std::process::ExitCode {
    colo_proxy::cli::main()
}
