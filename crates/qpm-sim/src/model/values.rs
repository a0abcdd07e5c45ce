//! Property values as stored and as printed by the API.

use serde::{Deserialize, Serialize};

/// A property value. Integers are kept as canonical decimal text so that any
/// Python `int` survives unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", content = "v")]
pub enum Val {
    /// Python `None` (printed as the empty string).
    None,
    /// A boolean (printed `True`/`False`).
    Bool(bool),
    /// An integer in canonical decimal text.
    Int(String),
    /// A string (also IP addresses and UUIDs in canonical form).
    Str(String),
    /// A qube, by name.
    Vm(String),
    /// A label, by index.
    Label(u32),
}

impl Val {
    /// An integer value.
    pub fn int(v: i128) -> Self {
        Self::Int(v.to_string())
    }

    /// Truthiness as Python sees it.
    pub fn truthy(&self) -> bool {
        match self {
            Self::None => false,
            Self::Bool(b) => *b,
            Self::Int(s) => s != "0",
            Self::Str(s) => !s.is_empty(),
            Self::Vm(_) | Self::Label(_) => true,
        }
    }

    /// The qube name of a VM value.
    pub fn as_vm(&self) -> Option<&str> {
        match self {
            Self::Vm(n) => Some(n),
            _ => None,
        }
    }

    /// The text of a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }
}
