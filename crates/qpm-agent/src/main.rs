#![forbid(unsafe_code)]
//! `qpm-agent`: the qrexec service that receives configuration in a target qube.

fn main() {
    eprintln!("qpm-agent: not implemented yet");
    std::process::exit(2);
}
