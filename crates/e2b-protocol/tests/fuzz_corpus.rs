//! Replays the committed fuzz corpus (`fuzz/corpus/envelope`) through the fuzz target's entry
//! point, so every input the fuzzer kept (and every crash it found, once fixed) stays checked.

#[test]
fn envelope_corpus_replays() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/envelope");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("the corpus is committed") {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        sandkit_e2b_protocol::fuzzing::envelope(&data);
        n += 1;
    }
    assert!(n >= 20, "the corpus has {n} inputs");
}
