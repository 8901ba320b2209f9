use super::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn open(dir: &Path, segment_bytes: u64) -> (Log, Recovery, Vec<(u64, Vec<u8>)>) {
    let (log, rec, seen) = open_at(dir, segment_bytes);
    let seen = seen.into_iter().map(|(at, p)| (at.seq, p)).collect();
    (log, rec, seen)
}

fn open_at(dir: &Path, segment_bytes: u64) -> (Log, Recovery, Vec<(Position, Vec<u8>)>) {
    let mut seen = Vec::new();
    let config = Config {
        segment_bytes,
        ..Config::new(dir)
    };
    let (log, rec) = Log::open(config, |at, p| seen.push((at, p.to_vec()))).unwrap();
    (log, rec, seen)
}

fn seqs(positions: Vec<Position>) -> Vec<u64> {
    positions.into_iter().map(|p| p.seq).collect()
}

fn msg(i: u64) -> Vec<u8> {
    format!("message {i} {}", "x".repeat((i % 50) as usize)).into_bytes()
}

#[test]
fn appended_records_come_back_in_order_after_reopening_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let (log, rec, seen) = open(dir.path(), 1024);
        assert_eq!(rec.next, 0);
        assert!(seen.is_empty());
        for chunk in 0..20u64 {
            let batch: Vec<Vec<u8>> = (chunk * 10..chunk * 10 + 10).map(msg).collect();
            let seqs = seqs(rt.block_on(log.append(batch)).unwrap());
            assert_eq!(seqs, (chunk * 10..chunk * 10 + 10).collect::<Vec<_>>());
        }
        assert!(log.segments().len() > 3, "{:?}", log.segments());
    }
    let (log, rec, seen) = open(dir.path(), 1024);
    assert_eq!(rec.records, 200);
    assert_eq!(rec.next, 200);
    assert_eq!(rec.truncated, None);
    assert_eq!(seen.len(), 200);
    for (i, (seq, payload)) in seen.iter().enumerate() {
        assert_eq!(*seq, i as u64);
        assert_eq!(payload, &msg(i as u64));
    }
    // Appends continue the sequence.
    assert_eq!(
        seqs(rt.block_on(log.append(vec![msg(200)])).unwrap()),
        vec![200]
    );
}

#[test]
fn a_torn_tail_is_cut_off_and_reported_and_the_log_goes_on_from_the_last_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let (log, _, _) = open(dir.path(), 1 << 20);
        rt.block_on(log.append((0..5).map(msg).collect())).unwrap();
    }
    let seg = list_segments(dir.path()).unwrap().pop().unwrap();
    let whole = seg.bytes;
    // A crash mid-write: half a record, then garbage from a lost write.
    let mut f = OpenOptions::new().append(true).open(&seg.path).unwrap();
    let mut partial = Vec::new();
    encode(&mut partial, 5, b"lost in the crash");
    f.write_all(&partial[..partial.len() / 2]).unwrap();
    drop(f);
    let (log, rec, seen) = open(dir.path(), 1 << 20);
    assert_eq!(seen.len(), 5);
    let (path, at, dropped) = rec.truncated.clone().expect("truncated");
    assert_eq!((path, at), (seg.path.clone(), whole));
    assert_eq!(dropped, (partial.len() / 2) as u64);
    assert_eq!(std::fs::metadata(&seg.path).unwrap().len(), whole);
    assert_eq!(
        seqs(rt.block_on(log.append(vec![msg(5)])).unwrap()),
        vec![5]
    );
    drop(log);
    // A flipped byte in the last record is a torn tail too.
    let mut bytes = std::fs::read(&seg.path).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&seg.path, &bytes).unwrap();
    let (_, rec, seen) = open(dir.path(), 1 << 20);
    assert_eq!(seen.len(), 5);
    assert!(rec.truncated.is_some());
}

#[test]
fn damage_before_the_last_segment_is_an_error_naming_the_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let (log, _, _) = open(dir.path(), 256);
        for i in 0..40 {
            rt.block_on(log.append(vec![msg(i)])).unwrap();
        }
    }
    let segs = list_segments(dir.path()).unwrap();
    assert!(segs.len() >= 3);
    let mut bytes = std::fs::read(&segs[0].path).unwrap();
    bytes[HEADER + 1] ^= 0x01;
    std::fs::write(&segs[0].path, &bytes).unwrap();
    let err = Log::open(
        Config {
            segment_bytes: 256,
            ..Config::new(dir.path())
        },
        |_, _| {},
    )
    .err()
    .expect("corruption refused");
    let text = err.to_string();
    assert!(
        text.contains(&segs[0].path.display().to_string())
            && text.contains("byte 0")
            && text.contains("checksum"),
        "{text}"
    );
    // A missing middle segment is refused too.
    bytes[HEADER + 1] ^= 0x01;
    std::fs::write(&segs[0].path, &bytes).unwrap();
    std::fs::remove_file(&segs[1].path).unwrap();
    let err = Log::open(Config::new(dir.path()), |_, _| {})
        .err()
        .expect("gap refused");
    assert!(err.to_string().contains("was due"), "{err}");
}

#[test]
fn concurrent_appends_are_folded_into_fewer_commits_and_every_acknowledged_record_survives() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let acked = {
        let (log, _, _) = open(dir.path(), 1 << 20);
        let log = Arc::new(log);
        let acked = rt.block_on(async {
            let mut tasks = Vec::new();
            for t in 0..32u64 {
                let log = log.clone();
                tasks.push(tokio::spawn(async move {
                    let mut mine = Vec::new();
                    for i in 0..25u64 {
                        let body = format!("{t}/{i}").into_bytes();
                        let seq = log.append(vec![body.clone()]).await.unwrap()[0].seq;
                        mine.push((seq, body));
                    }
                    mine
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all
        });
        let commits = log.stats().commits.load(Ordering::Relaxed);
        assert!(
            commits < 800,
            "group commit folded 800 appends into {commits} commits"
        );
        acked
    };
    let (_, rec, seen) = open(dir.path(), 1 << 20);
    assert_eq!(rec.records, 800);
    for (seq, body) in acked {
        assert_eq!(seen[seq as usize].1, body);
    }
}

#[test]
fn compaction_drops_only_segments_whose_records_are_all_below_the_mark() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let (log, _, _) = open(dir.path(), 200);
    for i in 0..30 {
        rt.block_on(log.append(vec![msg(i)])).unwrap();
    }
    let segs = log.segments();
    let mark = segs[2].first;
    assert_eq!(rt.block_on(log.drop_before(mark)).unwrap(), 2);
    assert_eq!(log.segments()[0].first, mark);
    // The current segment is never dropped.
    let n = log.segments().len();
    assert_eq!(rt.block_on(log.drop_before(u64::MAX)).unwrap(), n - 1);
    drop(log);
    let (_, rec, seen) = open(dir.path(), 200);
    assert_eq!(rec.next, 30);
    assert!(seen.iter().all(|(s, _)| *s >= mark));
    assert_eq!(seen.last().map(|(s, _)| *s), Some(29));
}

#[test]
fn an_oversized_record_is_refused_before_it_reaches_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, _) = open(dir.path(), 1 << 20);
    let err = rt()
        .block_on(log.append(vec![vec![0; MAX_RECORD + 1]]))
        .unwrap_err();
    assert!(matches!(err, LogError::TooLarge(_)), "{err}");
    assert_eq!(log.segments()[0].bytes, 0);
}

#[test]
fn a_record_is_read_back_at_its_position_before_and_after_reopening_and_not_once_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut written = Vec::new();
    {
        let (log, _, _) = open_at(dir.path(), 300);
        for chunk in 0..10u64 {
            let batch: Vec<Vec<u8>> = (chunk * 3..chunk * 3 + 3).map(msg).collect();
            let at = rt.block_on(log.append(batch.clone())).unwrap();
            written.extend(at.into_iter().zip(batch));
        }
        assert!(log.segments().len() > 3);
        for (at, body) in &written {
            assert_eq!(&log.read(*at).unwrap(), body, "{at:?}");
        }
    }
    let (log, _, seen) = open_at(dir.path(), 300);
    // Replay reports the positions the appends returned.
    assert_eq!(seen, written);
    for (at, body) in &written {
        assert_eq!(&log.read(*at).unwrap(), body);
    }
    let mark = log.segments()[2].first;
    rt.block_on(log.drop_before(mark)).unwrap();
    let (gone, _) = &written[0];
    assert!(matches!(log.read(*gone), Err(LogError::Gone(0))));
    let (kept, body) = written.iter().find(|(at, _)| at.seq >= mark).unwrap();
    assert_eq!(&log.read(*kept).unwrap(), body);
    // A position that does not start a record is refused, not misread.
    let wrong = Position {
        seq: kept.seq,
        offset: kept.offset + 1,
    };
    assert!(matches!(log.read(wrong), Err(LogError::Corrupt { .. })));
}

#[test]
fn a_damaged_record_is_refused_on_read_with_its_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, _) = open_at(dir.path(), 1 << 20);
    let at = rt().block_on(log.append(vec![msg(1), msg(2)])).unwrap();
    let seg = log.segments()[0].path.clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    let last = (at[1].offset as usize) + HEADER + 3;
    bytes[last] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    assert_eq!(log.read(at[0]).unwrap(), msg(1));
    match log.read(at[1]) {
        Err(LogError::Corrupt {
            path,
            position,
            reason,
        }) => {
            assert_eq!(path, seg);
            assert_eq!(position, at[1].offset);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("read a damaged record: {other:?}"),
    }
}
