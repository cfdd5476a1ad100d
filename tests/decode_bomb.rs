//! A decompression bomb from a hostile upstream: the parse stops at the cap
//! and memory stays bounded, whatever the body inflates to.
//!
//! One test in its own binary, so the process's peak RSS is this test's.

use std::time::Instant;

use flate2::{Compress, Compression, Crc, FlushCompress};
use tokentap::call::{Call, ParseFailure};
use tokentap::genai::provider::Provider;
use tokentap::genai::request::{Operation, RequestFacts};
use tokentap::observe::{Observer, Pass};

const MIB: usize = 1 << 20;

/// A valid gzip member that inflates to `mib` MiB of zeros, built from one
/// sync-flushed deflate block of 1 MiB of zeros repeated (each is ~1 KiB).
fn gzip_bomb(mib: usize) -> Vec<u8> {
    let zeros = vec![0u8; MIB];
    let mut c = Compress::new(Compression::best(), false);
    let mut block = Vec::with_capacity(8 << 10);
    c.compress_vec(&zeros, &mut block, FlushCompress::Sync)
        .expect("compress");
    let mut crc = Crc::new();
    crc.update(&zeros);
    let mut one = Crc::new();
    one.update(&zeros);
    for _ in 1..mib {
        crc.combine(&one);
    }
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    for _ in 0..mib {
        out.extend_from_slice(&block);
    }
    out.extend_from_slice(&[0x03, 0x00]); // final empty fixed-Huffman block
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&((mib * MIB) as u32).to_le_bytes());
    out
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

fn reset_peak_rss() {
    // "5" resets the peak RSS (VmHWM) of this process
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn new_call() -> Call {
    Call::new(
        Some(Operation::ChatCompletions),
        RequestFacts::default(),
        "POST".to_owned(),
        "/v1/chat/completions".to_owned(),
        Provider::default(),
        "api.openai.com".to_owned(),
        443,
    )
}

#[test]
fn a_gzip_bomb_stops_at_the_cap_with_bounded_memory() {
    let bomb = gzip_bomb(1024);
    assert!(bomb.len() < 2 * MIB, "{} bytes", bomb.len());
    // (event stream, strip usage): a JSON body, an observed stream, a stream decoded for the client
    for (event_stream, strip) in [(false, false), (true, false), (true, true)] {
        reset_peak_rss();
        let before = peak_rss_kib();
        let mut obs = Observer::new(
            Some(Operation::ChatCompletions),
            event_stream,
            Some("gzip"),
            strip,
            Instant::now(),
        );
        // the whole bomb as one frame, then as a second frame of the same body
        for frame in [&bomb[..], &bomb[..]] {
            match obs.on_data(frame) {
                Pass::Unchanged => {}
                Pass::Edited(b) => assert!(b.len() <= 17 * MIB, "{} bytes", b.len()),
            }
        }
        let _ = obs.flush();
        let mut call = new_call();
        obs.finish_into(&mut call, true);
        let grew_mib = (peak_rss_kib().saturating_sub(before)) / 1024;
        println!("(event stream {event_stream}, strip {strip}): peak RSS +{grew_mib} MiB");
        assert!(
            call.parse_failures.contains(&ParseFailure::TooLarge),
            "({event_stream}, {strip}): {:?}",
            call.parse_failures
        );
        assert!(
            grew_mib < 96,
            "({event_stream}, {strip}): peak RSS grew by {grew_mib} MiB"
        );
    }
}
