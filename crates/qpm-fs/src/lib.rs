//! Filesystem access rooted in a directory handle: no symlink or `..` escape,
//! atomic replace (temp + fsync + rename + dir fsync).
#![forbid(unsafe_code)]
