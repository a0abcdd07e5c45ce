#![forbid(unsafe_code)]
//! `qpm-dom0`: dom0 bootstrap and the package policy gatekeeper.

fn main() {
    eprintln!("qpm-dom0: not implemented yet");
    std::process::exit(2);
}
