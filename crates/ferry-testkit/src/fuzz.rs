//! A small time-bounded fuzzer on stable Rust: mutates seed inputs (as text, so inputs stay
//! valid UTF-8) and calls a check on each until `FERRY_FUZZ_SECS` (default 10) have passed.
//! `FERRY_FUZZ_SEED` replays a run; the seed and the number of cases are printed at the end.
//! A panicking check has its input and the seed printed before the panic goes on. Crashes that
//! cannot be caught (a stack overflow aborts the process) are found with `FERRY_FUZZ_SAVE=path`:
//! each input is written there before it is checked.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Fragments that tend to find edges in SQL, templates and command parsers.
const TOKENS: &[&str] = &[
    "'",
    "\"",
    "`",
    ";",
    "--",
    "/*",
    "*/",
    "$$",
    "$[",
    "${",
    "}",
    "]",
    "(",
    ")",
    "[",
    "{",
    "\\",
    "/*!",
    "/*M!",
    "#",
    "\n",
    "\0",
    ",",
    ".",
    "*",
    "|",
    "=",
    "-",
    "+",
    "@",
    "@@",
    "::",
    "é",
    "😀",
    "\u{202e}",
    "ǅ",
    "select",
    "SELECT ",
    " from ",
    " where ",
    " union select ",
    " with ",
    " as ",
    " returning ",
    "delete",
    "into",
    " outfile ",
    "explain analyze ",
    "pg_terminate_backend(",
    "(select ",
    "count(*)",
    " join ",
    " using (",
    "lateral ",
    "yyyy",
    "MM",
    "dd",
    "HH",
    "mm",
    "ss",
    "add_months(",
    "last_day(",
    "-1",
    "+1",
    "/24",
    "*7",
    "|-1d",
    "+1M",
    "9999999999999999999",
    "-9223372036854775808",
    "1e308",
    "NaN",
];

/// Runs `check` on mutations of `seeds` (and on the seeds themselves) for the configured
/// time. `name` labels the printed summary.
pub fn run(name: &str, seeds: &[&str], check: impl Fn(&str)) {
    let seconds = std::env::var("FERRY_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(10.0);
    let seed = std::env::var("FERRY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(time_seed);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut rng = XorShift::new(seed);
    let seeds: Vec<Vec<char>> = if seeds.is_empty() {
        vec![Vec::new()]
    } else {
        seeds.iter().map(|s| s.chars().collect()).collect()
    };
    let mut cases = 0u64;
    let save = std::env::var_os("FERRY_FUZZ_SAVE");
    let try_one = |input: &str| {
        if let Some(path) = &save {
            let _ = std::fs::write(path, input);
        }
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(input))) {
            eprintln!("fuzz {name}: the check panicked on input {input:?}");
            eprintln!("fuzz {name}: replay with FERRY_FUZZ_SEED={seed}");
            resume_unwind(panic);
        }
    };
    for s in &seeds {
        try_one(&s.iter().collect::<String>());
        cases += 1;
    }
    while Instant::now() < deadline {
        // A few cases between clock reads.
        for _ in 0..16 {
            let input = mutate(&mut rng, &seeds);
            try_one(&input.into_iter().collect::<String>());
            cases += 1;
        }
    }
    eprintln!("fuzz {name}: {cases} cases in {seconds}s, seed {seed} (FERRY_FUZZ_SEED)");
}

fn time_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

/// xorshift64*: small, fast and reproducible; no cryptographic claims.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // Zero is xorshift's one fixed point.
        XorShift(if seed == 0 {
            0x2545_f491_4f6c_dd1d
        } else {
            seed
        })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// One to eight mutations stacked on a seed.
fn mutate(rng: &mut XorShift, seeds: &[Vec<char>]) -> Vec<char> {
    let mut input = seeds[rng.below(seeds.len())].clone();
    for _ in 0..=rng.below(8) {
        let at = rng.below(input.len() + 1);
        match rng.below(9) {
            0 => input.insert(at, random_char(rng)),
            1 if !input.is_empty() => {
                input.remove(at.min(input.len() - 1));
            }
            2 if !input.is_empty() => {
                let i = at.min(input.len() - 1);
                input[i] = random_char(rng);
            }
            3 => {
                // Splice: the start of this input and the end of another seed.
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            4 if !input.is_empty() => {
                // Duplicate a slice in place.
                let start = at.min(input.len() - 1);
                let end = (start + 1 + rng.below(16)).min(input.len());
                let slice: Vec<char> = input[start..end].to_vec();
                let times = if rng.chance(16) {
                    1 + rng.below(2000)
                } else {
                    1
                };
                for _ in 0..times {
                    input.splice(end..end, slice.iter().copied());
                }
            }
            5 | 6 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                input.splice(at..at, token.chars());
            }
            7 => {
                // A long run of one character or token.
                let token: Vec<char> = TOKENS[rng.below(TOKENS.len())].chars().collect();
                let limit = if rng.chance(8) { 5000 } else { 64 };
                let times = 1 + rng.below(limit);
                let run: Vec<char> = token
                    .iter()
                    .copied()
                    .cycle()
                    .take(token.len() * times)
                    .collect();
                input.splice(at..at, run);
            }
            _ => {
                // Change the case of a stretch.
                let end = (at + rng.below(12)).min(input.len());
                for c in &mut input[at..end] {
                    *c = if c.is_lowercase() {
                        c.to_uppercase().next().unwrap_or(*c)
                    } else {
                        c.to_lowercase().next().unwrap_or(*c)
                    };
                }
            }
        }
    }
    input
}

fn random_char(rng: &mut XorShift) -> char {
    match rng.below(4) {
        0 | 1 => (b' ' + rng.below(95) as u8) as char,
        2 => ['\n', '\t', '\r', '\0', '\u{7f}'][rng.below(5)],
        _ => char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('\u{fffd}'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_valid_text_and_vary() {
        let mut rng = XorShift::new(7);
        let seeds = vec!["select 1".chars().collect::<Vec<_>>()];
        let outputs: std::collections::HashSet<String> = (0..200)
            .map(|_| mutate(&mut rng, &seeds).into_iter().collect())
            .collect();
        assert!(outputs.len() > 150, "{}", outputs.len());
    }

    #[test]
    fn the_same_seed_replays_the_same_cases() {
        let seeds = vec!["abc".chars().collect::<Vec<_>>()];
        let run = |seed| {
            let mut rng = XorShift::new(seed);
            (0..50)
                .map(|_| mutate(&mut rng, &seeds).into_iter().collect::<String>())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }
}
