//! Gives back the resident pages of the agent's own code that start-up
//! touched and steady running does not need.
//!
//! Start-up runs much code that does not run again (config checks, package
//! verification, the compilers when nothing is cached, the engine and pool
//! set-up), and the kernel maps the file pages around every fault it takes
//! (fault-around, 64 KiB at a time). So after start about 15 MiB of the
//! binary's code counts in the agent's resident set, most of it cold.
//! Those pages are clean copies of the binary file: `MADV_DONTNEED` on the
//! executable's read-only mappings drops them from this process only (the page
//! cache keeps them, shared and reclaimable) and code that runs later is
//! faulted back in on demand, a minor fault per 64 KiB. Only read-only
//! mappings of the agent's own file with no anonymous page (a page copied
//! when written, as the loader's relocations are) are touched, so no
//! written page is ever reverted to the file's bytes. (A page-cache page
//! that is dirty because the binary was just written is still the file's
//! content; smaps' `Private_Dirty` counts it, `Anonymous` does not.)

use std::path::{Path, PathBuf};

/// Set to `1` to keep start-up code resident (to compare, or to profile).
pub const KEEP_ENV: &str = "OUTPOST_KEEP_STARTUP_CODE";

/// One mapping from `/proc/self/smaps`.
#[derive(Debug, PartialEq)]
struct Mapping {
    start: usize,
    end: usize,
    perms: String,
    path: PathBuf,
    rss_kib: u64,
    anonymous_kib: u64,
}

/// Parses `smaps` text: a header line per mapping, then `Key: value kB` lines.
fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                let perms = fields.next().unwrap_or("").to_owned();
                // offset, device, inode, then the path (which may hold spaces).
                let path: Vec<&str> = fields.skip(3).collect();
                out.push(Mapping {
                    start,
                    end,
                    perms,
                    path: PathBuf::from(path.join(" ")),
                    rss_kib: 0,
                    anonymous_kib: 0,
                });
                continue;
            }
        }
        let Some(m) = out.last_mut() else { continue };
        let kib = || fields.clone().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        match first {
            "Rss:" => m.rss_kib = kib(),
            "Anonymous:" => m.anonymous_kib = kib(),
            _ => {}
        }
    }
    out
}

impl Mapping {
    /// Private and not writable, so nothing can write it between a check
    /// and a drop: code (`r-xp`) and read-only data (`r--p`).
    fn is_private_read_only(&self) -> bool {
        self.perms == "r-xp" || self.perms == "r--p"
    }
}

/// The mappings it is safe and useful to drop: private read-only mappings
/// of `exe` with no anonymous (copied-on-write) page and something
/// resident. That is the code and the read-only data (strings, tables, the
/// relocation records the loader read once), never the relocated part
/// (copied on write) or anything writable.
fn droppable<'a>(maps: &'a [Mapping], exe: &'a Path) -> impl Iterator<Item = &'a Mapping> + 'a {
    maps.iter().filter(move |m| m.is_private_read_only() && m.path == exe && m.anonymous_kib == 0 && m.rss_kib > 0)
}

/// Drops the agent's resident code pages (see the module docs); returns how
/// many KiB were resident in the mappings dropped. A failure is returned, not
/// fatal: the pages simply stay.
pub fn release_startup_code() -> std::io::Result<u64> {
    if std::env::var_os(KEEP_ENV).is_some_and(|v| v == "1") {
        return Ok(0);
    }
    drop_code_pages()
}

fn drop_code_pages() -> std::io::Result<u64> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let maps = parse_smaps(&std::fs::read_to_string("/proc/self/smaps")?);
    let mut released = 0;
    for m in droppable(&maps, &exe) {
        // SAFETY: the range is one whole mapping the kernel listed for this
        // process: private, not writable, backed by the agent's own
        // executable file, with no anonymous page (never written, so it
        // holds exactly the file's bytes). MADV_DONTNEED on it only unmaps
        // those clean pages; the next access reads the same bytes back from
        // the page cache. No Rust object lives in it.
        let rc = unsafe { libc::madvise(m.start as *mut libc::c_void, m.end - m.start, libc::MADV_DONTNEED) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        released += m.rss_kib;
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0a00000 r--p 00000000 fe:01 1234 /usr/bin/outpost
Rss:                2048 kB
Anonymous:         0 kB
55d0c0a00000-55d0c2000000 r-xp 00a00000 fe:01 1234 /usr/bin/outpost
Size:              22528 kB
Rss:               14336 kB
Anonymous:         0 kB
55d0c2000000-55d0c2100000 r--p 02000000 fe:01 1234 /usr/bin/outpost
Rss:                1024 kB
Anonymous:       900 kB
7f0000000000-7f0000100000 r-xp 00000000 fe:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 800 kB
Anonymous:         0 kB
7f0000200000-7f0000300000 r-xp 00000000 fe:01 77 /opt/my dir/outpost
Rss:                 100 kB
Anonymous:         4 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                  12 kB
Anonymous:        12 kB
";

    #[test]
    fn smaps_is_parsed_with_paths_that_hold_spaces() {
        let maps = parse_smaps(SMAPS);
        assert_eq!(maps.len(), 6);
        assert_eq!(maps[1].start, 0x55d0c0a00000);
        assert_eq!(maps[1].end, 0x55d0c2000000);
        assert_eq!((maps[1].rss_kib, maps[1].anonymous_kib), (14336, 0));
        assert_eq!(maps[4].path, PathBuf::from("/opt/my dir/outpost"));
        assert_eq!(maps[5].path, PathBuf::from("[stack]"));
    }

    #[test]
    fn only_clean_code_of_the_agent_itself_is_dropped() {
        let maps = parse_smaps(SMAPS);
        let picked: Vec<usize> = droppable(&maps, Path::new("/usr/bin/outpost")).map(|m| m.start).collect();
        // Code and read-only data; not the relocated (copied on write) part, not libc.
        assert_eq!(picked, vec![0x55d0c0000000, 0x55d0c0a00000]);
        // A code mapping with a written page is left alone.
        assert_eq!(droppable(&maps, Path::new("/opt/my dir/outpost")).count(), 0);
    }

    #[test]
    fn dropping_code_shrinks_the_resident_set_and_the_code_still_runs() {
        // On the test binary itself, which has run the harness and tests.
        let exe = std::fs::read_link("/proc/self/exe").expect("exe");
        let own_maps = || -> Vec<Mapping> {
            let maps = parse_smaps(&std::fs::read_to_string("/proc/self/smaps").expect("smaps"));
            maps.into_iter().filter(|m| m.path == exe).collect()
        };
        let resident = || -> u64 { own_maps().iter().filter(|m| m.is_private_read_only()).map(|m| m.rss_kib).sum() };
        let before = resident();
        let released = drop_code_pages().expect("madvise");
        let after = resident();
        assert!(released > 0 && released <= before, "released {released} KiB of {before}: {:?}", own_maps());
        assert!(after < before, "resident code {before} KiB before, {after} after");
        // The dropped code runs again (parsing and filtering fault it back in).
        let maps = parse_smaps(SMAPS);
        assert_eq!(droppable(&maps, Path::new("/usr/bin/outpost")).count(), 2);
    }
}
