//! Names for addresses: the daemon's side of what the kernel learns from
//! DNS answers.
//!
//! The kernel files every A/AAAA address of a trusted answer under (cgroup
//! id, address) -> hash of the question name, and sends the daemon a copy
//! of the message (`DnsEvent`). `parse` reads that copy; `table` keeps which
//! name each cgroup resolved each address from, and the text behind each
//! hash, in bounded memory.
pub mod parse;
pub mod table;

pub use parse::{parse_answer, Answer, ParseError};
pub use table::{Counters, Learned, NameTable, TtlPolicy};

#[cfg(test)]
mod tests;
