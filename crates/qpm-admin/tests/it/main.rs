//! Integration tests of the client: malicious replies from a fake qubesd,
//! and every transport against an in-process simulator.

mod malicious;
mod simulator;
