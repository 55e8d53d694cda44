//! Member offsets of kernel structs, from the kernel's own BTF
//! (`/sys/kernel/btf/vmlinux`): the exec program reads a few fields of
//! `task_struct`, `mm_struct` and `linux_binprm`, whose places differ
//! between kernels and builds. aya keeps its BTF members private, and
//! only this much of the format is needed: the type section's records
//! (to step over them) and the members of structs and unions.
use std::{collections::HashMap, path::Path};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not BTF: {0}")]
    Format(String),
    #[error("BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("BTF struct `{0}` has no member `{1}`")]
    NoMember(String, String),
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    ty: u32,
    /// Bits from the start of the struct.
    bit_offset: u32,
}

#[derive(Debug, Default)]
struct Composite {
    members: Vec<Member>,
}

/// The structs and unions of one BTF blob.
pub struct Btf {
    strings: Vec<u8>,
    /// Type id -> struct or union (other kinds are not kept).
    composites: HashMap<u32, Composite>,
    /// Struct name -> type id (the first with members, not a forward).
    by_name: HashMap<String, u32>,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| BtfError::Format(format!("truncated at byte {at}")))
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses a little-endian BTF blob (the only byte order of the hosts
    /// the programs are built for).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.get(0..2) != Some(&[0x9f, 0xeb][..]) {
            return Err(BtfError::Format("bad magic (or not little-endian)".into()));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or_else(|| BtfError::Format("type section out of bounds".into()))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(|| BtfError::Format("string section out of bounds".into()))?
            .to_vec();
        let mut btf = Btf {
            strings,
            composites: HashMap::new(),
            by_name: HashMap::new(),
        };
        let mut at = 0;
        let mut id = 1u32;
        while at < types.len() {
            let name = u32_at(types, at)?;
            let info = u32_at(types, at + 4)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            at += 12;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                _ => 0,
            };
            if kind == KIND_STRUCT || kind == KIND_UNION {
                let mut c = Composite::default();
                for m in 0..vlen {
                    let base = at + m * 12;
                    let offset = u32_at(types, base + 8)?;
                    c.members.push(Member {
                        name: u32_at(types, base)?,
                        ty: u32_at(types, base + 4)?,
                        bit_offset: if kind_flag {
                            offset & 0xff_ffff
                        } else {
                            offset
                        },
                    });
                }
                if kind == KIND_STRUCT && name != 0 && vlen > 0 {
                    let n = btf.string(name).to_string();
                    btf.by_name.entry(n).or_insert(id);
                }
                btf.composites.insert(id, c);
            }
            at += extra;
            id += 1;
        }
        Ok(btf)
    }

    fn string(&self, at: u32) -> &str {
        let rest = self.strings.get(at as usize..).unwrap_or_default();
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous
    /// structs and unions (`mm_struct` keeps its fields in one).
    pub fn offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .by_name
            .get(name)
            .ok_or_else(|| BtfError::NoStruct(name.into()))?;
        self.find(id, member, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember(name.into(), member.into()))
    }

    fn find(&self, id: u32, member: &str, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        let c = self.composites.get(&id)?;
        for m in &c.members {
            if m.name != 0 && self.string(m.name) == member {
                return Some(m.bit_offset);
            }
        }
        for m in c.members.iter().filter(|m| m.name == 0) {
            // An anonymous member's type may sit behind modifiers; only
            // direct structs and unions are looked through.
            if let Some(inner) = self.find(m.ty, member, depth + 1) {
                return Some(m.bit_offset + inner);
            }
        }
        None
    }
}

/// The fields the exec program reads, from this kernel's BTF.
pub fn process_layout(
    path: &Path,
    args_bytes: u32,
) -> Result<monitor_common::process::Layout, BtfError> {
    let btf = Btf::from_file(path)?;
    Ok(monitor_common::process::Layout {
        task_mm: btf.offset("task_struct", "mm")?,
        task_real_parent: btf.offset("task_struct", "real_parent")?,
        task_tgid: btf.offset("task_struct", "tgid")?,
        mm_arg_start: btf.offset("mm_struct", "arg_start")?,
        mm_arg_end: btf.offset("mm_struct", "arg_end")?,
        bprm_filename: btf.offset("linux_binprm", "filename")?,
        args_bytes: args_bytes.min(monitor_common::process::ARGS_BYTES as u32),
        ready: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF gives every field the exec program reads,
    /// at offsets inside their structs' plausible sizes.
    #[test]
    fn this_kernels_layout() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("skipped: this kernel has no BTF at {}", path.display());
            return;
        }
        let l = process_layout(path, 4096).expect("layout from the kernel's BTF");
        assert_eq!(l.args_bytes, 1024, "capped at ARGS_BYTES");
        assert!(l.task_mm > 0 && l.task_mm < 16384, "{l:?}");
        assert!(l.mm_arg_end == l.mm_arg_start + 8, "{l:?}");
        assert_eq!(l.ready, 1);
    }

    /// A blob that is not BTF, a missing struct and a missing member are
    /// refused, each naming what is missing.
    #[test]
    fn bad_input_is_named() {
        assert!(matches!(
            Btf::parse(b"ELF\0....").err(),
            Some(BtfError::Format(_))
        ));
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            return;
        }
        let btf = Btf::from_file(path).expect("kernel BTF");
        let e = btf.offset("no_such_struct", "x").unwrap_err().to_string();
        assert_eq!(e, "BTF has no struct `no_such_struct`");
        let e = btf
            .offset("task_struct", "no_such_field")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "BTF struct `task_struct` has no member `no_such_field`");
    }
}
