//! A step's bundle: a plain (ustar) tar of a few files, written here
//! rather than with a crate; `tar xf` and every archive tool read it.

/// One 512-byte block.
const BLOCK: usize = 512;

/// A tar archive of `files` (name, contents), each file mode 0644, owned
/// by uid/gid 0, dated 0. Names are at most 100 bytes (step ids are
/// shorter: the model allows 63).
pub fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let size: usize = files
        .iter()
        .map(|(_, data)| BLOCK + data.len().div_ceil(BLOCK) * BLOCK)
        .sum();
    let mut out = Vec::with_capacity(size + 2 * BLOCK);
    for (name, data) in files {
        out.extend_from_slice(&header(name, data.len()));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    }
    // The end: two zero blocks.
    out.resize(out.len() + 2 * BLOCK, 0);
    out
}

fn header(name: &str, size: usize) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let put = |h: &mut [u8; BLOCK], at: usize, bytes: &[u8]| {
        h[at..at + bytes.len()].copy_from_slice(bytes);
    };
    let name = name.as_bytes();
    put(&mut h, 0, &name[..name.len().min(100)]);
    put(&mut h, 100, b"0000644\0");
    put(&mut h, 108, b"0000000\0");
    put(&mut h, 116, b"0000000\0");
    put(&mut h, 124, format!("{size:011o}\0").as_bytes());
    put(&mut h, 136, b"00000000000\0");
    // The checksum is summed with its own field as spaces.
    put(&mut h, 148, b"        ");
    h[156] = b'0';
    put(&mut h, 257, b"ustar\0");
    put(&mut h, 263, b"00");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_reads_back_what_was_written() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let big = vec![b'x'; 1500];
        let archive = tar(&[
            ("shape.js", b"export default (input) => input\n"),
            ("input.json", b"[1,2,3]"),
            ("big.txt", &big),
        ]);
        assert_eq!(archive.len() % BLOCK, 0);
        let path = dir.path().join("bundle.tar");
        std::fs::write(&path, &archive).expect("write");
        let status = std::process::Command::new("tar")
            .arg("xf")
            .arg(&path)
            .current_dir(dir.path())
            .status()
            .expect("tar runs");
        assert!(status.success());
        let read = |name: &str| std::fs::read(dir.path().join(name)).expect(name);
        assert_eq!(read("shape.js"), b"export default (input) => input\n");
        assert_eq!(read("input.json"), b"[1,2,3]");
        assert_eq!(read("big.txt"), big);
    }
}
