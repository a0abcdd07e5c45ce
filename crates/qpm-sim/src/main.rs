#![forbid(unsafe_code)]
//! `qpm-sim`: the simulated dom0.

fn main() {
    eprintln!("qpm-sim: not implemented yet");
    std::process::exit(2);
}
