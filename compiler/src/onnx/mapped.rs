//! A model file mapped into memory, so that decoding it copies no tensor
//! bytes: prost decodes `raw_data` fields as slices of the mapping
//! (`bytes::Bytes`), the importer copies each tensor once into its own
//! aligned buffer, and then releases the pages of the file it came from.
//! A model's weights are thus resident about once while it is imported,
//! not two or three times (file buffer, decoded message, IR constant).

use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use prost::bytes::Bytes;

/// A read-only, private mapping of a model file.
pub struct MappedModel {
    map: Arc<Mmap>,
}

/// Lets `Bytes` slices keep the mapping alive.
struct Owner(Arc<Mmap>);

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        &self.0[..]
    }
}

impl MappedModel {
    /// Map `path`; `None` where it cannot be mapped (an empty file, a pipe,
    /// a platform without mappings): the caller reads it instead.
    pub fn open(path: &Path) -> std::io::Result<Option<MappedModel>> {
        let file = std::fs::File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Ok(None);
        }
        // SAFETY: the mapping is read-only and private. Another process
        // truncating or rewriting the file while it is imported would
        // change (or fault on) bytes under it: the same hazard every
        // mmap-based model loader accepts; the bytes are copied out, and
        // the mapping dropped, before the model is used.
        match unsafe { Mmap::map(&file) } {
            Ok(map) => Ok(Some(MappedModel { map: Arc::new(map) })),
            Err(_) => Ok(None),
        }
    }

    /// The whole file as shared bytes (no copy).
    pub fn bytes(&self) -> Bytes {
        Bytes::from_owner(Owner(self.map.clone()))
    }

    /// Tell the kernel that `part` (a slice of this file, already copied
    /// out) is no longer needed, so its pages leave the resident set. A
    /// slice that does not lie in the mapping is ignored. Reading `part`
    /// again stays correct: the pages fault back in from the file.
    pub fn release(&self, part: &[u8]) {
        let base = self.map.as_ptr() as usize;
        let (start, end) = (part.as_ptr() as usize, part.as_ptr() as usize + part.len());
        if start < base || end > base + self.map.len() {
            return;
        }
        // Whole pages inside `part` only: its neighbours may still be read.
        let page = page_size();
        let first = (start - base).next_multiple_of(page);
        let last = (end - base) / page * page;
        if last > first {
            #[cfg(unix)]
            // SAFETY: the range lies inside a private, read-only file
            // mapping; dropping its pages loses nothing, since they are
            // read back from the file if touched again.
            unsafe {
                let _ = self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    first,
                    last - first,
                );
            }
        }
    }
}

#[cfg(unix)]
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

#[cfg(not(unix))]
fn page_size() -> usize {
    4096
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_pages_read_back_the_same() {
        let dir = std::env::temp_dir().join(format!("kiln-mapped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("blob.bin");
        let data: Vec<u8> = (0..3 * 65536u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let m = MappedModel::open(&path).unwrap().expect("a mapping");
        let b = m.bytes();
        let part = b.slice(1000..150_000);
        m.release(&part);
        assert_eq!(&part[..], &data[1000..150_000]);
        // A slice of something else is ignored.
        m.release(&data[..]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn empty_files_are_not_mapped() {
        let dir = std::env::temp_dir().join(format!("kiln-mapped-e-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("empty.onnx");
        std::fs::write(&path, b"").unwrap();
        assert!(MappedModel::open(&path).unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
