//! Multi-qube application packages: manifest, planner and journaled apply.
#![forbid(unsafe_code)]
