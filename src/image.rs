//! air-nanny's own binary image in memory: once the boot is done, the clean pages of its code and
//! read-only data are given back, so that what stays resident is what the steady state runs.
//!
//! Why: the kernel maps a file's pages 64 KiB at a time around every page touched
//! (`fault_around_bytes`), so start-up (argument parsing, validation, the TLS set-up, the boot)
//! leaves nearly the whole 2.3 MiB text resident, though the steady state runs a small part of it.
//! `MADV_DONTNEED` on a private file mapping drops the process's mappings of those pages (they
//! stay in the page cache: a page touched again comes back by a minor fault, no disk read). Only
//! mappings that hold no anonymous (copied-on-write) page qualify: on those the pages are exactly
//! the file's, so nothing is lost. The relocated read-only data (RELRO) and writable data keep
//! their private pages and are never touched here.
//!
//! The same call gives back the part of the calling thread's stack below the frames in use, when
//! that thread is the main one (the runtime thread): start-up's deep calls (argument parsing,
//! validation) left its pages dirty, and nothing below the stack pointer holds anything.
//!
//! What comes back is what runs; the hot-code order (`packaging/hot/`, applied by
//! `packaging/build.sh`) puts that code together at the start of the text, so it comes back as a
//! few 64 KiB windows instead of nearly all of them.

use std::io;

/// How long after READY the release is repeated: by then the boot's last steps (its notes, its
/// tasks and blocking threads ending) have run, and only the steady state touches code.
pub const AFTERMATH: std::time::Duration = std::time::Duration::from_secs(3);

/// One mapping of the executable, from `/proc/self/smaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    writable: bool,
    /// KiB of private anonymous (copied-on-write) pages in it.
    anonymous_kib: u64,
}

/// The mappings of `exe` in an smaps text.
fn mappings_of(smaps: &str, exe: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    let mut current = false;
    for line in smaps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let first = fields.next().unwrap_or_default();
        if first.ends_with(':') {
            if current && first == "Anonymous:" {
                if let (Some(m), Some(kib)) = (out.last_mut(), fields.next().and_then(|v| v.parse().ok())) {
                    m.anonymous_kib = kib;
                }
            }
            continue;
        }
        // A header: `start-end perms offset dev inode [path]`.
        let perms = fields.next().unwrap_or_default();
        let path = fields.nth(3).unwrap_or_default();
        current = false;
        let Some((a, b)) = first.split_once('-') else { continue };
        if path != exe {
            continue;
        }
        let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else { continue };
        current = true;
        out.push(Mapping { start, end, writable: perms.as_bytes().get(1) == Some(&b'w'), anonymous_kib: 0 });
    }
    out
}

/// The mappings whose pages may be dropped: read-only, and only the file's pages in them.
fn droppable(maps: &[Mapping]) -> impl Iterator<Item = &Mapping> {
    maps.iter().filter(|m| !m.writable && m.anonymous_kib == 0 && m.end > m.start)
}

/// Room left below the caller's frame for the `madvise` call itself (a signal handler that runs
/// later gets fresh pages, as any stack growth does).
const STACK_MARGIN: usize = 16 * 1024;

/// The part of the main thread's stack mapping `[start, end)` that lies at least
/// [`STACK_MARGIN`] below `sp`, page-aligned; `None` when `sp` is not in it (another thread).
fn unused_stack(start: usize, end: usize, sp: usize, page: usize) -> Option<(usize, usize)> {
    if !(start..end).contains(&sp) {
        return None;
    }
    let top = sp.checked_sub(STACK_MARGIN)? & !(page - 1);
    (top > start).then_some((start, top))
}

/// The main thread's stack mapping, from smaps.
fn stack_of(smaps: &str) -> Option<(usize, usize)> {
    let line = smaps.lines().find(|l| l.ends_with("[stack]"))?;
    let (a, b) = line.split_ascii_whitespace().next()?.split_once('-')?;
    Some((usize::from_str_radix(a, 16).ok()?, usize::from_str_radix(b, 16).ok()?))
}

/// About where the caller's stack frames end (an address in this very frame).
#[inline(never)]
fn stack_pointer() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

/// Drops this process's mappings of its executable's clean pages and, called on the main thread,
/// the unused part of its stack; returns how many bytes of address space were given back (what
/// was resident of them is what is saved). Errors only say that nothing (more) was done.
pub fn release_clean_pages() -> io::Result<usize> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let exe = exe.to_str().ok_or_else(|| io::Error::other("the executable's path is not UTF-8"))?;
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for m in droppable(&mappings_of(&smaps, exe)) {
        // SAFETY: the range is a whole mapping of our own executable that holds no private page
        // (Anonymous: 0) and is not writable: every page is the file's, so the kernel refills it
        // from the page cache at the next touch and no content changes.
        let r = unsafe { libc::madvise(m.start as *mut libc::c_void, m.end - m.start, libc::MADV_DONTNEED) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        released += m.end - m.start;
    }
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(4096);
    if let Some((start, end)) = stack_of(&smaps).and_then(|(s, e)| unused_stack(s, e, stack_pointer(), page)) {
        // SAFETY: the range is below every frame of this thread by STACK_MARGIN, so nothing
        // live is in it; touched again, its pages come back zeroed, as fresh stack does.
        if unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) } == 0 {
            released += end - start;
        }
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
7f4ec6200000-7f4ec6222000 r--p 00000000 fe:01 123 /usr/bin/air-nanny
Size:                136 kB
Rss:                 136 kB
Anonymous:             0 kB
7f4ec6222000-7f4ec64a1000 r-xp 00022000 fe:01 123 /usr/bin/air-nanny
Size:               2556 kB
Anonymous:             0 kB
7f4ec64a1000-7f4ec65ae000 r--p 002a1000 fe:01 123 /usr/bin/air-nanny
Anonymous:            96 kB
7f4ec65ae000-7f4ec65c8000 rw-p 003ae000 fe:01 123 /usr/bin/air-nanny
Anonymous:           104 kB
7f4ec65c8000-7f4ec65c9000 rw-p 00000000 00:00 0
Anonymous:             4 kB
7f4ec6757000-7f4ec6759000 r-xp 00000000 00:00 0 [vdso]
Anonymous:             0 kB
7f4ec6800000-7f4ec6801000 r-xp 00000000 fe:01 124 /usr/lib/other
Anonymous:             0 kB
";

    #[test]
    fn only_clean_read_only_mappings_of_the_executable_are_dropped() {
        let maps = mappings_of(SMAPS, "/usr/bin/air-nanny");
        assert_eq!(maps.len(), 4, "{maps:?}");
        let dropped: Vec<usize> = droppable(&maps).map(|m| m.start).collect();
        // The text and the first read-only segment; not the relocated read-only data (it holds
        // private pages), not the writable data, nothing of another file or the vDSO.
        assert_eq!(dropped, vec![0x7f4ec6200000, 0x7f4ec6222000]);
    }

    #[test]
    fn only_the_stack_well_below_the_frames_in_use_is_given_back() {
        let (start, end, page) = (0x7ff0_0000_0000, 0x7ff0_0002_1000, 4096);
        assert_eq!(stack_of(SMAPS), None);
        let with_stack = format!("{SMAPS}7ff000000000-7ff000021000 rw-p 00000000 00:00 0 [stack]\n");
        assert_eq!(stack_of(&with_stack), Some((start, end)));
        // sp 0x20800 into the stack: everything up to 16 KiB below it, page-aligned.
        assert_eq!(unused_stack(start, end, start + 0x20800, page), Some((start, start + 0x1c000)));
        assert_eq!(unused_stack(start, end, start + 0x3000, page), None, "less than the margin is in use");
        assert_eq!(unused_stack(start, end, 0x1234_0000, page), None, "another thread's stack");
    }

    #[test]
    fn releasing_keeps_the_process_working() {
        // Run in this very test process: every page comes back from the page cache when touched.
        let before: Vec<u64> = (0..1000u64).map(|i| i.wrapping_mul(2654435761) % 97).collect();
        let released = release_clean_pages().expect("madvise");
        assert!(released > 0, "the test binary has clean read-only mappings");
        let after: Vec<u64> = (0..1000u64).map(|i| i.wrapping_mul(2654435761) % 97).collect();
        assert_eq!(before, after);
        assert!(format!("{:?}", std::time::Instant::now()).len() > 1, "code and data still work");
    }
}
