//! Fuzz targets that run on stable Rust: a mutation fuzzer (bit flips, insertions, deletions,
//! dictionary tokens, splices of seed inputs) over the config parsers (config.yaml, the public file,
//! services.json), the API's bodies and query strings, and the HTTP probe's response parser.
//!
//! Each target runs for `FUZZ_SECONDS` (default 2; `tests/all.sh` gives each 20) with a seed from
//! `FUZZ_SEED` or the clock, printed so that a run can be repeated. The properties: nothing panics,
//! parsing what was rendered gives the same services back, a body never exceeds its cap. A failing
//! input is written to `target/fuzz-failures/`; copy it into `tests/fuzz/regressions/TARGET/` and
//! it is replayed by every run from then on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use air_nanny::config::{self, Problems, ServiceInfo, Settings};
use air_nanny::http::{parse_response, Want};

/// xorshift64*: small, fast, and repeatable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const DICT: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\u0000",
    "\\\"",
    "null",
    "true",
    "-1",
    "0",
    "1e999",
    "18446744073709551615",
    "9223372036854775808",
    "-9223372036854775809",
    "86401",
    "\"name\":",
    "\"script\":",
    "\"healthCheck\":",
    "\"test\":",
    "[\"CMD\",\"./x\"]",
    "[\"HTTP\",\"http://[::1]:1/\"]",
    "[\"TCP\",\"127.0.0.1:0\"]",
    "\"env\":{\"A=B\":\"\"}",
    "\"user\":\"-1\"",
    "\"..\"",
    "/../",
    "%00",
    "%",
    "%zz",
    "&",
    "=",
    "name=",
    "\r\n",
    "\r\n\r\n",
    "Content-Length: ",
    "Transfer-Encoding: chunked\r\n",
    "ffffffffffffffff\r\n",
    "HTTP/1.1 ",
    "200",
    "\n",
    ": ",
    "- ",
    "*a",
    "&a",
    "!!binary",
    "? ",
    "~",
    "数据",
    "\u{7f}",
    "\u{0}",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                input.drain(i..i + n);
            }
            3 | 4 => {
                let i = rng.below(len + 1);
                let tok = DICT[rng.below(DICT.len())].as_bytes();
                input.splice(i..i, tok.iter().copied());
            }
            5 if !seeds.is_empty() => {
                let other = &seeds[rng.below(seeds.len())];
                let (a, b) = (rng.below(other.len() + 1), rng.below(other.len() + 1));
                let i = rng.below(len + 1);
                input.splice(i..i, other[a.min(b)..a.max(b)].iter().copied());
            }
            6 if len > 1 => {
                let (a, b) = (rng.below(len), rng.below(len));
                let chunk = input[a.min(b)..a.max(b)].to_vec();
                let i = rng.below(len + 1);
                input.splice(i..i, chunk);
            }
            _ => {}
        }
        input.truncate(64 * 1024);
    }
}

fn seconds() -> Duration {
    Duration::from_secs_f64(std::env::var("FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0))
}

/// Replays the regression inputs of `target`, then fuzzes `check` for the time budget.
fn fuzz(target: &str, seeds: Vec<Vec<u8>>, mut check: impl FnMut(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/regressions").join(target);
    let mut corpus = seeds;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let input = std::fs::read(e.path()).unwrap();
            check(&input);
            corpus.push(input);
        }
    }
    let seed = std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("fuzz {target}: FUZZ_SEED={seed}, {:?}", seconds());
    let mut rng = Rng(seed);
    let deadline = Instant::now() + seconds();
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let mut input = corpus[rng.below(corpus.len())].clone();
        mutate(&mut rng, &corpus, &mut input);
        if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
            let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
            std::fs::create_dir_all(&out).unwrap();
            let file = out.join(format!("{target}-{seed}-{runs}"));
            std::fs::write(&file, &input).unwrap();
            panic!("fuzz {target}: FUZZ_SEED={seed} run {runs} failed; the input is in {}", file.display());
        }
        runs += 1;
    }
    eprintln!("fuzz {target}: {runs} inputs, no failure");
}

fn seed_files() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    vec![
        std::fs::read(root.join("tests/data/godbproxy.json")).unwrap(),
        std::fs::read(root.join("conf/services.json")).unwrap(),
    ]
}

#[test]
fn fuzz_services_json() {
    fuzz("services_json", seed_files(), |input| {
        let (services, problems) = config::parse_services(input, "services.json");
        if !problems.has_errors() {
            // What the store would write parses back to the same services.
            let text = config::render_services(&services);
            let (again, p) = config::parse_services(&text, "services.json");
            assert!(!p.has_errors(), "{p}");
            assert_eq!(again, services);
        }
    });
}

#[test]
fn fuzz_api_body() {
    fuzz("api_body", seed_files(), |input| {
        if let Ok(info) = ServiceInfo::from_json(input) {
            assert!(config::service::check_name(&info.name).is_ok());
            let text = serde_json::to_vec(&info).unwrap();
            assert_eq!(ServiceInfo::from_json(&text).unwrap(), info);
        }
    });
}

#[test]
fn fuzz_query_string() {
    let seeds = vec![b"name=godbproxy".to_vec(), b"name=%E6%95%B0&lines=10".to_vec(), b"limit=5&x".to_vec()];
    fuzz("query_string", seeds, |input| {
        let q = air_nanny::api::query(Some(String::from_utf8_lossy(input).into_owned()));
        for (k, v) in q {
            let _ = (k.len(), v.len());
        }
    });
}

#[test]
fn fuzz_http_response() {
    let seeds = vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        b"HTTP/1.1 404 NF\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n".to_vec(),
        b"HTTP/1.0 503 Busy\r\n\r\nbody".to_vec(),
    ];
    fuzz("http_response", seeds, |input| {
        for (eof, cap) in [(false, 16), (true, 16), (true, 1 << 16)] {
            if let Ok(Some(r)) = parse_response(input, eof, Want::Body(cap)) {
                assert!(r.body.len() <= cap, "{} > {cap}", r.body.len());
                assert!((100..=999).contains(&r.status));
            }
            let _ = parse_response(input, eof, Want::Status);
        }
    });
}

/// config.yaml and the public file are read from disk: each input is written to a private temp
/// directory and loaded as air-nanny would.
fn yaml_target(target: &str, which: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let config = b"SERVER: air_nanny\nPUBLIC_CONF: public.yaml\nSERVER_PORT: 8090\nSERVER_ADDR: 127.0.0.1\nSTART_TIMEOUT: 30\nLOG_MAX_FILES: 3\nALLOWED_DIRS: [root]\nAPI_HOST_NAMES: [nanny.local]\nALLOWED_CHECK_HOSTS: [\"127.0.0.2\"]\n".to_vec();
    let public = b"rootpath: root\nother: [1, 2]\n".to_vec();
    let seeds =
        if which == "config" { vec![config.clone(), public.clone()] } else { vec![public.clone(), config.clone()] };
    fuzz(target, seeds, |input| {
        let (cfg, pubf): (PathBuf, PathBuf) = (d.join("config.yaml"), d.join("public.yaml"));
        if which == "config" {
            std::fs::write(&cfg, input).unwrap();
            std::fs::write(&pubf, &public).unwrap();
        } else {
            std::fs::write(&cfg, &config).unwrap();
            std::fs::write(&pubf, input).unwrap();
        }
        let mut problems = Problems::default();
        let s = Settings::load(&cfg, &mut problems);
        assert_eq!(s.is_some() && !problems.has_errors(), s.is_some(), "settings with errors: {problems}");
    });
}

#[test]
fn fuzz_config_yaml() {
    yaml_target("config_yaml", "config");
}

#[test]
fn fuzz_public_file() {
    yaml_target("public_file", "public");
}
