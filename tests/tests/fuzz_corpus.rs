//! Every committed fuzz input (corpora and the crash inputs found so far)
//! goes through its parser on every run, so a regression on a known crash
//! fails CI; then a bounded burst of random mutations of them (not
//! coverage-guided: `tests/fuzz/run.sh` is) looks a little further.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use keel_tests::fuzz::{inputs, TARGETS};

#[test]
fn every_committed_input_is_handled_without_a_panic() {
    for (name, target) in TARGETS {
        let files = inputs(name);
        assert!(!files.is_empty(), "no corpus for {name}");
        for file in files {
            let data = std::fs::read(&file).unwrap();
            target(&data);
        }
    }
}

#[test]
fn random_mutations_of_the_corpora_are_handled_without_a_panic() {
    let mut rng = fastrand::Rng::with_seed(0x6b65656c);
    for (name, target) in TARGETS {
        let seeds: Vec<Vec<u8>> = inputs(name)
            .iter()
            .map(|f| std::fs::read(f).unwrap())
            .collect();
        for _ in 0..3000 {
            let mut data = seeds[rng.usize(..seeds.len())].clone();
            for _ in 0..rng.usize(1..8) {
                let at = rng.usize(..=data.len());
                match rng.u8(..4) {
                    0 if !data.is_empty() => {
                        let i = rng.usize(..data.len());
                        data[i] = rng.u8(..);
                    }
                    1 => data.insert(at, rng.u8(..)),
                    2 if at < data.len() => {
                        data.remove(at);
                    }
                    _ => {
                        // Splice in a piece of another seed.
                        let other = &seeds[rng.usize(..seeds.len())];
                        let from = rng.usize(..=other.len());
                        let to = rng.usize(from..=other.len());
                        data.splice(at..at, other[from..to].iter().copied());
                    }
                }
            }
            target(&data);
        }
    }
}
