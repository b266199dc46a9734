//! Replays the committed fuzz corpora (`fuzz/corpus/volumes`, `fuzz/corpus/config`) through the
//! fuzz targets' entry points.

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = format!("{}/../../fuzz/corpus/{target}", env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("the corpus is committed") {
        run(&std::fs::read(entry.unwrap().path()).unwrap());
        n += 1;
    }
    n
}

#[test]
fn volumes_corpus_replays() {
    assert!(replay("volumes", sandkit_config::fuzzing::volumes) >= 10);
}

#[test]
fn config_corpus_replays() {
    assert!(replay("config", sandkit_config::fuzzing::config) >= 10);
}
