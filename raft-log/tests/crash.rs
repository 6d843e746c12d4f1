//! Crash tests: a torn tail at every byte offset, random bit flips, and purge.
// Protobuf messages read best built field by field.
#![allow(clippy::field_reassign_with_default)]

mod common;

use std::path::Path;

use raft::eraftpb::HardState;
use raft_log::{scan_frames, Error, GroupId, LogIndex, Wal, WalConfig, WriteBatch};
use rand::{Rng, SeedableRng};

use common::{copy_dir, entry, segment_files};

const GROUPS: u64 = 3;

/// Everything observable about the groups, for comparing recovered states.
#[derive(Debug, PartialEq, Clone)]
struct View(Vec<GroupView>);

/// Group id, first index, last index, HardState, entries as (index, term, data).
type GroupView = (u64, u64, u64, HardState, Vec<(u64, u64, Vec<u8>)>);

fn view(wal: &Wal) -> View {
    wal.check_invariants();
    let mut v = Vec::new();
    for g in 0..GROUPS {
        let gid = GroupId(g);
        let Some(st) = wal.group_state(gid) else {
            continue;
        };
        let ents = wal
            .entries(gid, st.first_index, LogIndex(st.last_index.0 + 1), None)
            .unwrap()
            .into_iter()
            .map(|e| (e.index, e.term, e.data.to_vec()))
            .collect();
        v.push((g, st.first_index.0, st.last_index.0, st.hard_state, ents));
    }
    View(v)
}

fn config(dir: &Path) -> WalConfig {
    WalConfig { segment_bytes_max: 2048, cache_entries_per_group_max: 1, ..WalConfig::new(dir) }
}

/// Writes a small multi-group log; returns the view after each completed batch
/// (including the empty start).
fn build_log(dir: &Path, batches: u64) -> Vec<View> {
    let wal = Wal::open(config(dir)).unwrap();
    let mut views = vec![view(&wal)];
    let mut next = [1u64; GROUPS as usize];
    for i in 0..batches {
        let mut b = WriteBatch::new();
        for g in 0..GROUPS {
            if (i + g) % 2 == 0 {
                let n = next[g as usize];
                // Every fifth batch overwrites the previous entry (a Raft conflict).
                let start = if i % 5 == 4 && n > 1 { n - 1 } else { n };
                let ents: Vec<_> = (start..start + 2)
                    .map(|idx| entry(idx, 1 + i / 5, format!("g{g}-i{idx}-b{i}").as_bytes()))
                    .collect();
                b.add_entries(GroupId(g), &ents);
                next[g as usize] = start + 2;
            }
        }
        let mut hs = HardState::default();
        hs.term = 1 + i / 5;
        hs.commit = i;
        b.set_hard_state(GroupId(i % GROUPS), &hs);
        if i == batches / 2 {
            b.compact(GroupId(0), LogIndex(3));
        }
        wal.write(b).unwrap();
        views.push(view(&wal));
    }
    views
}

#[test]
fn torn_tail_at_every_byte_recovers_a_durable_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let views = build_log(dir.path(), 24);
    let files = segment_files(dir.path());
    assert!(files.len() >= 2, "the log should span several segments");
    let last = files.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    let mut prev_k = 0;
    for cut in 0..=len {
        let copy = copy_dir(dir.path());
        let victim = copy.path().join(last.file_name().unwrap());
        std::fs::OpenOptions::new().write(true).open(&victim).unwrap().set_len(cut).unwrap();
        let wal = Wal::open(config(copy.path())).unwrap_or_else(|e| panic!("cut at {cut}: recovery failed: {e}"));
        let got = view(&wal);
        let k = views
            .iter()
            .rposition(|v| *v == got)
            .unwrap_or_else(|| panic!("cut at {cut}: recovered state is not a prefix: {got:?}"));
        assert!(k >= prev_k, "cut at {cut}: longer file recovered less ({k} < {prev_k})");
        prev_k = k;
    }
    assert_eq!(prev_k, views.len() - 1, "the untouched log recovers everything");
}

#[test]
fn bit_flips_give_a_prefix_or_corruption_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let views = build_log(dir.path(), 16);
    let files = segment_files(dir.path());
    let seed = 0x5eed_u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut prefixes, mut corruptions) = (0, 0);
    for round in 0..300 {
        let copy = copy_dir(dir.path());
        let pick = &files[rng.random_range(0..files.len())];
        let victim = copy.path().join(pick.file_name().unwrap());
        let mut bytes = std::fs::read(&victim).unwrap();
        for _ in 0..rng.random_range(1..=3) {
            let bit = rng.random_range(0..bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
        }
        std::fs::write(&victim, &bytes).unwrap();
        match Wal::open(config(copy.path())) {
            Ok(wal) => {
                let got = view(&wal);
                assert!(views.contains(&got), "seed {seed} round {round}: flip in {pick:?} recovered garbage");
                prefixes += 1;
            }
            Err(Error::Corruption { file, .. }) => {
                assert_eq!(
                    file.file_name(),
                    pick.file_name(),
                    "seed {seed} round {round}: corruption names the wrong file"
                );
                corruptions += 1;
            }
            Err(e) => panic!("seed {seed} round {round}: unexpected error {e}"),
        }
    }
    assert!(prefixes > 0 && corruptions > 0, "both outcomes are exercised");
}

/// The last segment's file and the offsets of its valid frames.
fn last_segment_frames(dir: &Path) -> (std::path::PathBuf, Vec<u64>) {
    let last = segment_files(dir).pop().expect("a log has a segment");
    let seq: u64 = last.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()).expect("segment name");
    let scan = scan_frames(seq, &std::fs::read(&last).unwrap());
    assert!(scan.bad.is_none(), "the untouched log has no bad frame: {:?}", scan.bad);
    (last, scan.frames.iter().map(|f| f.offset).collect())
}

#[test]
fn damaged_middle_frame_of_the_last_segment_with_valid_frames_after_it_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    build_log(dir.path(), 24);
    let (last, offsets) = last_segment_frames(dir.path());
    assert!(offsets.len() >= 3, "the last segment needs frames before and after the damaged one: {offsets:?}");
    // Every frame but the last has an acknowledged frame after it. Damage each in turn:
    // its payload (crc mismatch), its length field and its crc field.
    for (i, &at) in offsets[..offsets.len() - 1].iter().enumerate() {
        for (what, byte) in [("payload", at + 8 + 3), ("length", at), ("crc", at + 5)] {
            let copy = copy_dir(dir.path());
            let victim = copy.path().join(last.file_name().unwrap());
            let mut bytes = std::fs::read(&victim).unwrap();
            bytes[byte as usize] ^= 0x10;
            std::fs::write(&victim, &bytes).unwrap();
            match Wal::open(config(copy.path())) {
                Err(Error::Corruption { file, offset, reason }) => {
                    assert_eq!(file, victim, "frame {i} ({what}): corruption names the wrong file");
                    assert_eq!(offset, at, "frame {i} ({what}): corruption names the wrong offset ({reason})");
                }
                Err(e) => panic!("frame {i} at {at} ({what}): expected corruption, got {e}"),
                Ok(wal) => panic!(
                    "frame {i} at {at} ({what}): opened (recovered {} groups) although acknowledged frames follow \
                     the damaged one",
                    wal.groups().len()
                ),
            }
            let after = std::fs::read(&victim).unwrap();
            assert_eq!(after, bytes, "frame {i} ({what}): a refused open must leave the segment as it was");
        }
    }
}

#[test]
fn zero_filled_or_garbage_tail_after_the_last_frame_is_still_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let views = build_log(dir.path(), 24);
    let (last, offsets) = last_segment_frames(dir.path());
    let full = std::fs::read(&last).unwrap();
    let last_frame = full[*offsets.last().unwrap() as usize..].to_vec();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7a11);
    let mut flipped_copy = last_frame.clone();
    let at = rng.random_range(0..flipped_copy.len());
    flipped_copy[at] ^= 1 << rng.random_range(0..8);
    let tails: Vec<(&str, Vec<u8>)> = vec![
        ("zeros", vec![0; 4096]),
        ("garbage", (0..4096).map(|_| rng.random::<u8>()).collect()),
        ("prefix of the last frame", last_frame[..last_frame.len() / 2].to_vec()),
        ("copy of the last frame with a flipped bit", flipped_copy),
    ];
    for (what, tail) in tails {
        let copy = copy_dir(dir.path());
        let victim = copy.path().join(last.file_name().unwrap());
        let mut bytes = full.clone();
        bytes.extend_from_slice(&tail);
        std::fs::write(&victim, &bytes).unwrap();
        let wal = Wal::open(config(copy.path())).unwrap_or_else(|e| panic!("{what}: recovery failed: {e}"));
        assert_eq!(view(&wal), *views.last().unwrap(), "{what}: every acknowledged batch is recovered");
        drop(wal);
        assert_eq!(std::fs::read(&victim).unwrap(), full, "{what}: the torn tail is cut off");
    }
    // The same tails cut into the last frame itself (a write in flight at the crash): the
    // state before that frame's batch is recovered.
    let mut cut = full[..full.len() - 3].to_vec();
    cut.extend_from_slice(&[0; 64]);
    let copy = copy_dir(dir.path());
    std::fs::write(copy.path().join(last.file_name().unwrap()), &cut).unwrap();
    let wal = Wal::open(config(copy.path())).expect("a torn last frame is cut off");
    assert_eq!(view(&wal), views[views.len() - 2]);
}

#[test]
fn missing_middle_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    build_log(dir.path(), 80);
    let files = segment_files(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    std::fs::remove_file(&files[1]).unwrap();
    match Wal::open(config(dir.path())) {
        Err(Error::Corruption { file, .. }) => assert_eq!(file, files[1]),
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn purge_deletes_segments_and_keeps_everything_above_the_compact_point() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WalConfig { segment_bytes_max: 1024, ..WalConfig::new(dir.path()) };
    let g = GroupId(7);
    let wal = Wal::open(cfg.clone()).unwrap();
    let mut next = 1;
    let append = |wal: &Wal, next: &mut u64, n: u64| {
        for _ in 0..n {
            let mut b = WriteBatch::new();
            let ents: Vec<_> = (*next..*next + 5).map(|i| entry(i, 2, &[i as u8; 40])).collect();
            b.add_entries(g, &ents);
            wal.write(b).unwrap();
            *next += 5;
        }
    };
    append(&wal, &mut next, 40);
    let files_before = segment_files(dir.path()).len();
    assert_eq!(wal.indexed_entry_count(), 200);
    assert_eq!(wal.stats().segments_purged, 0);
    wal.compact(g, LogIndex(150)).unwrap().wait().unwrap();
    assert_eq!(wal.indexed_entry_count(), 50, "compacted entries leave the index at once");
    // Purge happens at the next rotations.
    append(&wal, &mut next, 10);
    wal.check_invariants();
    let files_after = segment_files(dir.path()).len();
    assert!(wal.stats().segments_purged > 0, "some segments were purged");
    assert!(files_after < files_before, "{files_after} >= {files_before}");
    let last = next - 1;
    assert_eq!(wal.indexed_entry_count() as u64, last - 150);
    drop(wal);
    let wal = Wal::open(cfg).unwrap();
    wal.check_invariants();
    let st = wal.group_state(g).unwrap();
    assert_eq!((st.first_index.0, st.last_index.0), (151, last));
    let ents = wal.entries(g, LogIndex(151), LogIndex(last + 1), None).unwrap();
    assert_eq!(ents.len() as u64, last - 150);
    assert!(ents.iter().enumerate().all(|(i, e)| e.index == 151 + i as u64 && e.data[0] == e.index as u8));
    assert!(matches!(wal.entries(g, LogIndex(150), LogIndex(151), None), Err(Error::Compacted)));
    assert_eq!(wal.term(g, LogIndex(150)).unwrap().0, 2);
}

#[test]
fn interrupted_purge_is_finished_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WalConfig { segment_bytes_max: 1024, ..WalConfig::new(dir.path()) };
    let g = GroupId(1);
    let wal = Wal::open(cfg.clone()).unwrap();
    for i in 0..30u64 {
        let mut b = WriteBatch::new();
        b.add_entries(g, &[entry(i + 1, 1, &[1; 100])]);
        wal.write(b).unwrap();
    }
    // Keep a copy of the pre-purge files, then compact and rotate so they get purged.
    let before = copy_dir(dir.path());
    wal.compact(g, LogIndex(30)).unwrap().wait().unwrap();
    for i in 30..45u64 {
        let mut b = WriteBatch::new();
        b.add_entries(g, &[entry(i + 1, 1, &[1; 100])]);
        wal.write(b).unwrap();
    }
    assert!(wal.stats().segments_purged > 0);
    drop(wal);
    // Simulate a crash midway through an oldest-first purge: put back the newest of the
    // purged files, so the log starts in the middle of the old entries.
    let live = segment_files(dir.path());
    let first_live = live[0].file_name().unwrap().to_owned();
    let old: Vec<_> =
        segment_files(before.path()).into_iter().filter(|p| p.file_name().unwrap() < first_live.as_os_str()).collect();
    assert!(old.len() >= 2);
    let restored = old.last().unwrap();
    std::fs::copy(restored, dir.path().join(restored.file_name().unwrap())).unwrap();
    let wal = Wal::open(cfg).unwrap();
    let st = wal.group_state(g).unwrap();
    assert_eq!((st.first_index.0, st.last_index.0), (31, 45));
    wal.check_invariants();
    assert_eq!(wal.entries(g, LogIndex(31), LogIndex(46), None).unwrap().len(), 15);
    assert!(!dir.path().join(restored.file_name().unwrap()).exists(), "the interrupted purge is finished on open");
}

#[test]
fn second_open_of_the_same_directory_fails() {
    let dir = tempfile::tempdir().unwrap();
    let _wal = Wal::open(WalConfig::new(dir.path())).unwrap();
    assert!(matches!(Wal::open(WalConfig::new(dir.path())), Err(Error::Io(_))));
}

/// A process that dies without closing the WAL leaves its active segment at the
/// preallocated length, zeros after the last frame. Recovery takes the zeros as the end of
/// the log, appends continue in a new segment, and a frame torn inside the preallocated
/// region, or a damaged frame with acknowledged frames after it, is still told apart.
#[test]
fn a_preallocated_segment_left_by_a_crash_reopens_appends_and_still_detects_damage() {
    segment_with_zeros_left_by_a_crash(|dir: &Path| WalConfig {
        segment_bytes_max: 64 << 10,
        segment_preallocate: true,
        segment_zero_ahead_bytes: 0,
        ..WalConfig::new(dir)
    });
}

/// The same with zeros written ahead of the frames by the zero-ahead thread instead.
#[test]
fn a_segment_zeroed_ahead_left_by_a_crash_reopens_appends_and_still_detects_damage() {
    segment_with_zeros_left_by_a_crash(|dir: &Path| WalConfig {
        segment_bytes_max: 64 << 10,
        segment_preallocate: false,
        segment_zero_ahead_bytes: 1 << 20,
        ..WalConfig::new(dir)
    });
}

/// Every entry of `g` in the log, as (index, data).
fn group_entries(wal: &Wal, g: GroupId) -> Vec<(u64, Vec<u8>)> {
    let st = wal.group_state(g).unwrap();
    wal.entries(g, st.first_index, LogIndex(st.last_index.0 + 1), None)
        .unwrap()
        .into_iter()
        .map(|e| (e.index, e.data.to_vec()))
        .collect()
}

/// The active segment's length, once it reaches `len` (the zero-ahead thread writes its
/// zeros in the background); fails after 10 s.
fn wait_segment_len(dir: &Path, len: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let last = segment_files(dir).pop().unwrap();
        let now = std::fs::metadata(&last).unwrap().len();
        if now == len {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the active segment stayed at {now} bytes, not {len}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn segment_with_zeros_left_by_a_crash(cfg: fn(&Path) -> WalConfig) {
    let dir = tempfile::tempdir().unwrap();
    let g = GroupId(1);
    // `len | crc` before every frame's payload.
    const FRAME_HEADER: usize = 8;
    let append = |wal: &Wal, from: u64, to: u64| {
        for i in from..to {
            let mut b = WriteBatch::new();
            b.add_entries(g, &[entry(i, 1, format!("e{i}").as_bytes())]);
            wal.write(b).unwrap();
        }
    };
    let wal = Wal::open(cfg(dir.path())).unwrap();
    append(&wal, 1, 21);
    wait_segment_len(dir.path(), 64 << 10);
    // The crash: the files as they are while the WAL is open.
    let crashed = copy_dir(dir.path());
    drop(wal);
    let last = segment_files(crashed.path()).pop().unwrap();
    let image = std::fs::read(&last).unwrap();
    assert_eq!(image.len(), 64 << 10, "the active segment is preallocated or zeroed ahead");
    let seq: u64 = last.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()).unwrap();
    let scan = scan_frames(seq, &image);
    let offsets: Vec<u64> = scan.frames.iter().map(|f| f.offset).collect();
    let end = scan.bad.expect("the zeros after the last frame are no frame").0;
    assert!(image[end as usize..].iter().all(|b| *b == 0));
    assert_eq!(
        std::fs::metadata(segment_files(dir.path()).pop().unwrap()).unwrap().len(),
        end,
        "a closed WAL trims its segment to its frames"
    );

    let entries_of = |wal: &Wal| group_entries(wal, g);
    let want = |to: u64| -> Vec<(u64, Vec<u8>)> { (1..to).map(|i| (i, format!("e{i}").into_bytes())).collect() };

    // Reopen the crashed image: everything acknowledged, then appends, then again.
    let reopened = copy_dir(crashed.path());
    let wal = Wal::open(cfg(reopened.path())).expect("a preallocated tail is the end of the log");
    wal.check_invariants();
    assert_eq!(entries_of(&wal), want(21));
    append(&wal, 21, 41);
    let crashed_again = copy_dir(reopened.path());
    drop(wal);
    for d in [reopened.path(), crashed_again.path()] {
        let wal = Wal::open(cfg(d)).unwrap();
        wal.check_invariants();
        assert_eq!(entries_of(&wal), want(41), "{}", d.display());
    }

    // A write torn inside the preallocated region: the last frame's first bytes, zeros after.
    let last_frame = *offsets.last().unwrap() as usize;
    for keep in [1, FRAME_HEADER, (last_frame + end as usize) / 2 - last_frame] {
        let copy = copy_dir(crashed.path());
        let mut bytes = image.clone();
        bytes[last_frame + keep..end as usize].fill(0);
        std::fs::write(copy.path().join(last.file_name().unwrap()), &bytes).unwrap();
        let wal = Wal::open(cfg(copy.path())).unwrap_or_else(|e| panic!("torn after {keep} bytes: {e}"));
        assert_eq!(entries_of(&wal), want(20), "torn after {keep} bytes: the last batch is lost, no other");
    }
    // Bytes cut in the middle of the last frame (the file shorter than preallocated).
    let copy = copy_dir(crashed.path());
    std::fs::OpenOptions::new()
        .write(true)
        .open(copy.path().join(last.file_name().unwrap()))
        .unwrap()
        .set_len(end - 3)
        .unwrap();
    assert_eq!(entries_of(&Wal::open(cfg(copy.path())).unwrap()), want(20));
    // A damaged frame with acknowledged frames after it, zeros after those: corruption.
    let middle = offsets[offsets.len() / 2];
    let copy = copy_dir(crashed.path());
    let mut bytes = image.clone();
    bytes[middle as usize + FRAME_HEADER + 2] ^= 0x40;
    let victim = copy.path().join(last.file_name().unwrap());
    std::fs::write(&victim, &bytes).unwrap();
    match Wal::open(cfg(copy.path())) {
        Err(Error::Corruption { file, offset, .. }) => assert_eq!((file, offset), (victim, middle)),
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("opened although acknowledged frames follow the damaged one"),
    }
}

/// A group that wrote a few entries long ago keeps the segment holding them, and every
/// segment after it, however much another group writes and compacts. `held_by_old_segments`
/// names what to compact to release the old segments; after it the log shrinks to the newest
/// few, and the cold group keeps its newer entries.
#[test]
fn a_cold_group_releases_old_segments_once_compacted_to_what_they_hold() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WalConfig { segment_bytes_max: 1024, ..WalConfig::new(dir.path()) };
    let (hot, cold) = (GroupId(1), GroupId(2));
    let wal = Wal::open(cfg.clone()).unwrap();
    let write = |wal: &Wal, g: GroupId, from: u64, n: u64| {
        let mut b = WriteBatch::new();
        let ents: Vec<_> = (from..from + n).map(|i| entry(i, 1, &[i as u8; 40])).collect();
        b.add_entries(g, &ents);
        wal.write(b).unwrap();
    };
    write(&wal, cold, 1, 3);
    let mut next = 1;
    for _ in 0..60 {
        write(&wal, hot, next, 5);
        next += 5;
        // The hot group keeps nothing below its last entry.
        wal.compact(hot, LogIndex(next - 1)).unwrap().wait().unwrap();
    }
    let pinned = segment_files(dir.path()).len();
    assert!(pinned > 10, "the cold group's 3 entries keep every segment: {pinned}");
    let held = wal.held_by_old_segments(2);
    assert_eq!(held.get(&cold), Some(&LogIndex(3)), "{held:?}");
    assert_eq!(held.get(&hot), None, "the hot group's old entries are compacted: {held:?}");
    // The cold group writes once more, then is compacted to what the old segments hold.
    write(&wal, cold, 4, 1);
    wal.compact(cold, LogIndex(3)).unwrap().wait().unwrap();
    for _ in 0..10 {
        write(&wal, hot, next, 5);
        next += 5;
        wal.compact(hot, LogIndex(next - 1)).unwrap().wait().unwrap();
    }
    let after = segment_files(dir.path()).len();
    assert!(after <= 4, "{after} segments remain (from {pinned})");
    // Entry 4 has aged into an old segment in turn: the next purge releases it the same way.
    assert_eq!(wal.held_by_old_segments(2).get(&cold), Some(&LogIndex(4)));
    drop(wal);
    let wal = Wal::open(cfg).unwrap();
    wal.check_invariants();
    let st = wal.group_state(cold).unwrap();
    assert_eq!((st.first_index.0, st.last_index.0), (4, 4));
    assert_eq!(wal.entries(cold, LogIndex(4), LogIndex(5), None).unwrap()[0].data[0], 4);
}

/// Purged segments become later segments instead of being deleted (`writer.rs`,
/// "Recycling"): at most `segment_recycle_max` wait as `.recycle` files, a recycled segment
/// gets no zeros written ahead, and the old frames after the new ones are never read as log,
/// after a crash (the active segment ends in them) or when a recycle file is left over.
#[test]
fn recycled_segments_hold_the_log_across_crashes_and_get_no_zeros() {
    const SEGMENT: u64 = 16 << 10;
    let cfg = |dir: &Path| WalConfig {
        segment_bytes_max: SEGMENT,
        segment_zero_ahead_bytes: 8 << 10,
        segment_recycle_max: 2,
        ..WalConfig::new(dir)
    };
    let dir = tempfile::tempdir().unwrap();
    let g = GroupId(1);
    let data = |i: u64| format!("entry {i} ").repeat(100).into_bytes();
    let append = |wal: &Wal, from: u64, to: u64| {
        for i in from..to {
            let mut b = WriteBatch::new();
            b.add_entries(g, &[entry(i, 1, &data(i))]);
            wal.write(b).unwrap();
            // Keep the last ten entries, so segments are purged as the log moves on.
            if i > 10 {
                wal.compact(g, LogIndex(i - 10)).unwrap().wait().unwrap();
            }
        }
    };
    let entries_of = |wal: &Wal| group_entries(wal, g);
    // The ten entries `append` keeps before `to`; compared by index and content, reported by
    // index (the entries are a kilobyte each).
    let same = |got: Vec<(u64, Vec<u8>)>, to: u64| {
        let want: Vec<(u64, Vec<u8>)> = (to - 10..to).map(|i| (i, data(i))).collect();
        assert!(got == want, "entries {:?}, not {:?}", got.iter().map(|e| e.0).collect::<Vec<_>>(), to - 10..to);
    };
    let recycle_files = |d: &Path| {
        std::fs::read_dir(d)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "recycle"))
            .count()
    };

    let wal = Wal::open(cfg(dir.path())).unwrap();
    append(&wal, 1, 601);
    let stats = wal.stats();
    let started =
        segment_files(dir.path()).last().unwrap().file_stem().unwrap().to_str().unwrap().parse::<u64>().unwrap();
    assert!(stats.segments_recycled > 10, "{stats:?}");
    assert!(recycle_files(dir.path()) <= 2);
    // Zeros only in the segments that were created, none in a recycled one.
    assert!(stats.zero_bytes_written <= (started - stats.segments_recycled) * SEGMENT, "{stats:?}");

    // The crash: the active segment is a recycled file, its new frames followed by old ones.
    let crashed = copy_dir(dir.path());
    drop(wal);
    let last = segment_files(crashed.path()).pop().unwrap();
    let image = std::fs::read(&last).unwrap();
    let seq: u64 = last.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()).unwrap();
    let end = scan_frames(seq, &image).bad.expect("old frames after the new ones do not scan").0;
    assert!(image[end as usize..].iter().any(|b| *b != 0), "the tail is an old segment's frames, not zeros");
    for _ in 0..2 {
        let wal = Wal::open(cfg(crashed.path())).expect("old frames after the last one are the end of the log");
        wal.check_invariants();
        same(entries_of(&wal), 601);
    }

    // A recycle file left by a crash before its rename (any bytes at all): recovery does not
    // read it as log, and the next segment is made from it.
    let left = copy_dir(crashed.path());
    for f in std::fs::read_dir(left.path()).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|x| x == "recycle") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let junk: Vec<u8> = image.iter().rev().copied().collect();
    std::fs::write(left.path().join("0000000000099999.recycle"), &junk).unwrap();
    let wal = Wal::open(cfg(left.path())).unwrap();
    assert_eq!(wal.stats().segments_recycled, 1, "the new segment is the recycle file");
    same(entries_of(&wal), 601);
    append(&wal, 601, 611);
    drop(wal);
    let wal = Wal::open(cfg(left.path())).unwrap();
    wal.check_invariants();
    same(entries_of(&wal), 611);
}
