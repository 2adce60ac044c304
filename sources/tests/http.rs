//! The HTTP source against the fault-injecting server of `disksynth-tests`.

mod http {
    use std::io::Write;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use disksynth_tests::httpd::{Fault, FaultServer};
    use disksynth_tests::random_bytes;
    use sources::http::{HttpAuth, HttpDev, HttpError, HttpOptions};
    use synth::testing::check_dev;
    use synth::{BlockDev, ErrorKind};

    /// Quick retries so fault tests run fast; generous timeouts otherwise.
    fn opts() -> HttpOptions {
        HttpOptions {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(5),
            retry_base: Duration::from_millis(10),
            retry_cap: Duration::from_millis(100),
            ..HttpOptions::default()
        }
    }

    fn no_readahead() -> HttpOptions {
        HttpOptions {
            readahead: 0,
            ..opts()
        }
    }

    fn serve(len: usize) -> (FaultServer, Vec<u8>) {
        let data = random_bytes(len as u64 ^ 0x4854_5450, len);
        (FaultServer::start(data.clone()), data)
    }

    fn read(dev: &HttpDev, offset: u64, len: usize) -> synth::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        dev.read_at(&mut buf, offset).map(|()| buf)
    }

    fn assert_io_error(r: synth::Result<Vec<u8>>, needle: &str) -> String {
        let e = r.expect_err("the read should fail");
        assert_eq!(e.kind(), ErrorKind::Io, "{e}");
        let msg = e.to_string();
        assert!(msg.contains(needle), "{needle:?} not in: {msg}");
        msg
    }

    #[test]
    fn random_reads_return_exact_bytes() {
        let (server, data) = serve((3 << 20) + 4567);
        for readahead in [0, 256 << 10] {
            let dev = HttpDev::open(
                &server.url(),
                &HttpOptions {
                    readahead,
                    ..opts()
                },
            )
            .unwrap();
            assert_eq!(dev.size(), data.len() as u64);
            check_dev(&dev, &data, &[1 << 20, 2 << 20]);
        }
        assert!(server.log().iter().all(|r| r.header("if-range").is_some()
            || r.header("range") == Some("bytes=0-0")
            || r.method == "HEAD"));
    }

    #[test]
    fn empty_file_opens() {
        let (server, _) = serve(0);
        let dev = HttpDev::open(&server.url(), &opts()).unwrap();
        assert_eq!(dev.size(), 0);
        dev.read_at(&mut [], 0).unwrap();
    }

    #[test]
    fn status_200_with_the_same_validator_means_ranges_ignored() {
        let (server, data) = serve(1 << 20);
        let dev = HttpDev::open(&server.url(), &no_readahead()).unwrap();
        // The whole file with the ETag seen at open: Range was ignored, the
        // file is the same one.
        server.fail_next(1, Fault::Status200Full);
        let msg = assert_io_error(read(&dev, 4096, 4096), "ignored the Range header");
        assert!(msg.contains("does not support range requests"), "{msg}");
        assert!(!msg.contains("replaced"), "{msg}");
        // Not a replacement: the next read is served.
        assert!(read(&dev, 4096, 4096).unwrap() == data[4096..8192]);
    }

    #[test]
    fn status_200_with_a_new_validator_means_replaced() {
        let (server, data) = serve(1 << 20);
        let dev = HttpDev::open(&server.url(), &no_readahead()).unwrap();
        server.replace(data.clone());
        assert_io_error(read(&dev, 4096, 4096), "replaced");
        // Every later read fails too, without asking the server.
        let before = server.requests();
        assert_io_error(read(&dev, 0, 512), "changed");
        assert_eq!(server.requests(), before);
    }

    #[test]
    fn status_200_without_validator_is_misbehaviour() {
        let (server, data) = serve(1 << 20);
        server.set_validators(false, false);
        let dev = HttpDev::open(&server.url(), &no_readahead()).unwrap();
        server.fail_next(1, Fault::Status200Full);
        assert_io_error(read(&dev, 4096, 4096), "ignored the Range header");
        assert!(read(&dev, 4096, 4096).unwrap() == data[4096..8192]);
    }

    #[test]
    fn wrong_content_range_fails_the_read() {
        let (server, data) = serve(1 << 20);
        let dev = HttpDev::open(&server.url(), &no_readahead()).unwrap();
        server.fail_next(1, Fault::WrongContentRange);
        assert_io_error(read(&dev, 1000, 5000), "Content-Range");
        // Misbehaving once does not condemn the file.
        assert!(read(&dev, 1000, 5000).unwrap() == data[1000..6000]);
    }

    #[test]
    fn truncated_bodies_are_retried() {
        let (server, data) = serve(1 << 20);
        let dev = HttpDev::open(&server.url(), &no_readahead()).unwrap();
        server.fail_next(2, Fault::TruncatedBody);
        assert!(read(&dev, 10, 300_000).unwrap() == data[10..300_010]);
        assert_eq!(dev.stats().retries, 2);
    }

    #[test]
    fn dropped_connections_are_retried() {
        let (server, data) = serve(1 << 20);
        let dev = HttpDev::open(&server.url(), &no_readahead()).unwrap();
        server.fail_next(2, Fault::ResetConnection);
        assert!(read(&dev, 77, 9000).unwrap() == data[77..9077]);
        assert_eq!(dev.stats().retries, 2);
    }

    #[test]
    fn status_503_then_ok() {
        let (server, data) = serve(1 << 20);
        let dev = HttpDev::open(&server.url(), &no_readahead()).unwrap();
        server.fail_next(3, Fault::Status503);
        assert!(read(&dev, 0, 4096).unwrap() == data[..4096]);
        assert_eq!(dev.stats().retries, 3);
    }

    #[test]
    fn status_429_waits_for_retry_after() {
        let (server, data) = serve(1 << 20);
        let dev = HttpDev::open(&server.url(), &no_readahead()).unwrap();
        server.fail_next(
            1,
            Fault::Status429 {
                retry_after: Some("1".into()),
            },
        );
        let t = Instant::now();
        assert!(read(&dev, 512, 512).unwrap() == data[512..1024]);
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(950) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    }

    #[test]
    fn retries_give_up_with_the_last_error() {
        let (server, _) = serve(1 << 20);
        let dev = HttpDev::open(
            &server.url(),
            &HttpOptions {
                retries: 2,
                ..no_readahead()
            },
        )
        .unwrap();
        server.reset_counters();
        server.fail_every(Some((1, Fault::Status503)));
        let msg = assert_io_error(read(&dev, 0, 4096), "after 3 attempts");
        assert!(msg.contains("503"), "{msg}");
        assert_eq!(server.gets(), 3);
    }

    #[test]
    fn stalls_past_the_read_timeout_are_retried() {
        let (server, data) = serve(1 << 20);
        let o = HttpOptions {
            read_timeout: Duration::from_millis(300),
            ..no_readahead()
        };
        let dev = HttpDev::open(&server.url(), &o).unwrap();
        server.fail_next(1, Fault::Stall(Duration::from_secs(20)));
        let t = Instant::now();
        assert!(read(&dev, 100, 100).unwrap() == data[100..200]);
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert_eq!(dev.stats().retries, 1);
    }

    #[test]
    fn endless_stalls_fail_in_bounded_time() {
        let (server, _) = serve(1 << 20);
        let o = HttpOptions {
            read_timeout: Duration::from_millis(200),
            retries: 2,
            ..no_readahead()
        };
        let dev = HttpDev::open(&server.url(), &o).unwrap();
        server.fail_every(Some((1, Fault::Stall(Duration::from_secs(20)))));
        let t = Instant::now();
        assert_io_error(read(&dev, 0, 100), "after 3 attempts");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        // Dropping the server ends its stalled handlers promptly.
        let t = Instant::now();
        drop(server);
        assert!(t.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn etag_change_mid_serve_fails_reads() {
        let (server, data) = serve(1 << 20);
        let dev = HttpDev::open(&server.url(), &no_readahead()).unwrap();
        assert!(read(&dev, 0, 4096).unwrap() == data[..4096]);
        let old = server.etag();
        server.replace(random_bytes(99, data.len()));
        let msg = assert_io_error(read(&dev, 8192, 4096), "changed");
        assert!(msg.contains("replaced"), "{msg}");
        // The If-Range sent was the ETag seen at open.
        let last = server.log().pop().unwrap();
        assert_eq!(last.header("if-range"), Some(old.as_str()));
    }

    #[test]
    fn last_modified_serves_as_validator() {
        let (server, data) = serve(1 << 20);
        server.set_validators(false, true);
        let dev = HttpDev::open(&server.url(), &no_readahead()).unwrap();
        assert!(read(&dev, 0, 10).unwrap() == data[..10]);
        let sent = server.log().pop().unwrap();
        assert!(
            sent.header("if-range").unwrap().ends_with("GMT"),
            "{sent:?}"
        );
        server.replace(data.clone());
        assert_io_error(read(&dev, 0, 10), "replaced");
    }

    #[test]
    fn servers_ignoring_if_range_are_caught_by_the_answer() {
        // Same size: the new ETag on the 206 gives it away.
        let (server, data) = serve(1 << 20);
        server.set_honour_if_range(false);
        let dev = HttpDev::open(&server.url(), &no_readahead()).unwrap();
        server.replace(random_bytes(5, data.len()));
        assert_io_error(read(&dev, 0, 4096), "ETag changed");

        // A new size shows in the Content-Range total.
        let (server, data) = serve(1 << 20);
        server.set_honour_if_range(false);
        server.set_validators(false, false);
        let dev = HttpDev::open(&server.url(), &no_readahead()).unwrap();
        server.replace(random_bytes(6, data.len() + 1));
        assert_io_error(read(&dev, 0, 4096), "size changed");
    }

    #[test]
    fn missing_file_fails_open_naming_the_url() {
        let (server, _) = serve(100);
        let url = format!("{}/nope.img", server.base_url());
        let e = HttpDev::open(&url, &opts()).unwrap_err();
        assert!(
            matches!(e, HttpError::NotFound { status: 404, .. }),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains(&url) && msg.contains("not found"), "{msg}");
    }

    #[test]
    fn head_unsupported_falls_back_to_a_range_probe() {
        let (server, data) = serve(12345);
        server.set_head(false);
        let dev = HttpDev::open(&server.url(), &opts()).unwrap();
        assert_eq!(dev.size(), 12345);
        let log = server.log();
        assert_eq!(log[0].method, "HEAD");
        assert_eq!(log[1].header("range"), Some("bytes=0-0"));
        check_dev(&dev, &data, &[]);
    }

    #[test]
    fn missing_accept_ranges_is_checked_by_a_probe() {
        let (server, _) = serve(4096);
        server.set_accept_ranges(false);
        assert_eq!(HttpDev::open(&server.url(), &opts()).unwrap().size(), 4096);
        server.fail_next(1, Fault::Status200Full);
        let e = HttpDev::open(&server.url(), &opts()).unwrap_err();
        assert!(matches!(e, HttpError::NoRanges { .. }), "{e:?}");
    }

    #[test]
    fn redirects_are_followed() {
        let (server, data) = serve(70_000);
        let url = format!("{}/redirect", server.base_url());
        let dev = HttpDev::open(&url, &opts()).unwrap();
        check_dev(&dev, &data, &[]);
    }

    #[test]
    fn readahead_coalesces_sequential_reads() {
        let (server, data) = serve(8 << 20);
        let dev = HttpDev::open(
            &server.url(),
            &HttpOptions {
                readahead: 1 << 20,
                ..opts()
            },
        )
        .unwrap();
        server.reset_counters();
        let n = 128;
        for i in 0..n {
            let off = i * 65536;
            assert!(read(&dev, off as u64, 65536).unwrap() == data[off..off + 65536]);
        }
        let gets = server.gets();
        // One direct read, then windows that start at the read's size and double per
        // continuation (64K, 128K, 256K, 512K) up to the 1 MiB cap, one request each.
        let expect = n * 65536 / (1 << 20);
        assert!((expect..=expect + 5).contains(&gets), "{gets} GETs");
        // Reads the windows still cover make no request.
        assert!(
            read(&dev, (7 << 20) + 4096, 8192).unwrap()
                == data[(7 << 20) + 4096..(7 << 20) + 12288]
        );
        assert_eq!(server.gets(), gets);

        let dev = HttpDev::open(&server.url(), &no_readahead()).unwrap();
        server.reset_counters();
        for i in 0..16 {
            read(&dev, i * 65536, 65536).unwrap();
        }
        assert_eq!(server.gets(), 16);
    }

    #[test]
    fn concurrent_readers_share_windows() {
        let (server, data) = serve(4 << 20);
        let dev = Arc::new(
            HttpDev::open(
                &server.url(),
                &HttpOptions {
                    readahead: 2 << 20,
                    ..opts()
                },
            )
            .unwrap(),
        );
        read(&dev, 0, 4096).unwrap();
        server.reset_counters();
        server.set_delay(Duration::from_millis(300));
        // A pipelining client: the continuation starts a window, and the reads after it
        // arrive while windows are in flight; they wait for them rather than ask again, so
        // no byte is requested twice (windows grow from the read size, so several may be
        // needed).
        std::thread::scope(|s| {
            let check = |i: u64| {
                let off = (i * 4096) as usize;
                assert!(read(&dev, off as u64, 4096).unwrap() == data[off..off + 4096]);
            };
            s.spawn(move || check(1));
            let t = Instant::now();
            while server.gets() == 0 && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(2));
            }
            // In order, a little apart (well inside the origin's 300 ms):
            // reads that all arrive at once in reverse order each continue
            // nothing yet and rightly go to the origin one by one; the
            // assertion about overlaps below holds in every order.
            for i in 2..8u64 {
                s.spawn(move || check(i));
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let log = server.log();
        let mut ranges: Vec<(u64, u64)> = log
            .iter()
            .filter_map(|r| {
                let v = &r.headers.iter().find(|(k, _)| k == "range")?.1;
                let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
                Some((a.parse().ok()?, b.parse().ok()?))
            })
            .collect();
        assert_eq!(ranges.len(), log.len(), "{log:?}");
        assert!(ranges.len() < 7, "one request per read: {log:?}");
        ranges.sort();
        for w in ranges.windows(2) {
            assert!(w[0].1 < w[1].0, "a range was requested twice: {log:?}");
        }
    }

    #[test]
    fn concurrency_cap_is_honoured() {
        let (server, data) = serve(4 << 20);
        let dev = HttpDev::open(
            &server.url(),
            &HttpOptions {
                max_in_flight: 3,
                ..no_readahead()
            },
        )
        .unwrap();
        server.reset_counters();
        server.set_delay(Duration::from_millis(30));
        std::thread::scope(|s| {
            for t in 0..12u64 {
                let dev = &dev;
                let data = &data;
                s.spawn(move || {
                    for k in 0..3u64 {
                        let off = ((t * 7 + k * 131) % 1000) as usize * 4096;
                        assert!(read(dev, off as u64, 4096).unwrap() == data[off..off + 4096]);
                    }
                });
            }
        });
        assert_eq!(server.gets(), 36);
        let peak = server.max_concurrent();
        assert!((2..=3).contains(&peak), "peak {peak}");
    }

    #[test]
    fn credentials_are_sent_and_never_shown() {
        let (server, data) = serve(1 << 16);
        server.require_auth(Some("Basic YWxpY2U6czNjcmV0LXB3"));
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "alice:s3cret-pw").unwrap();
        let auth = HttpAuth::from_file(file.path()).unwrap();
        let o = HttpOptions {
            auth: Some(auth.clone()),
            ..opts()
        };
        let dev = HttpDev::open(&server.url(), &o).unwrap();
        check_dev(&dev, &data, &[]);
        assert!(server
            .log()
            .iter()
            .all(|r| r.header("authorization") == Some("Basic YWxpY2U6czNjcmV0LXB3")));
        assert!(!format!("{o:?} {dev:?}").contains("s3cret"));

        // Wrong password: a clear error that does not echo it.
        let wrong = HttpOptions {
            auth: Some(HttpAuth::parse("alice:wrong-pw-42", "test").unwrap()),
            ..opts()
        };
        let e = HttpDev::open(&server.url(), &wrong).unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(
            shown.contains("credentials") && !shown.contains("wrong-pw-42"),
            "{shown}"
        );
        // None at all.
        let e = HttpDev::open(&server.url(), &opts())
            .unwrap_err()
            .to_string();
        assert!(e.contains("401") && e.contains("no credentials"), "{e}");
        // Or in the URL: refused before any request.
        let url = server.url().replace("http://", "http://alice:s3cret-pw@");
        let e = HttpDev::open(&url, &o).unwrap_err().to_string();
        assert!(
            e.contains("refusing credentials") && !e.contains("s3cret"),
            "{e}"
        );
        // Or in a header.
        let hdr = HttpOptions {
            headers: vec![("Authorization".into(), "Basic YWxpY2U6czNjcmV0LXB3".into())],
            ..opts()
        };
        let e = HttpDev::open(&server.url(), &hdr).unwrap_err().to_string();
        assert!(!e.contains("YWxpY2U6"), "{e}");
    }

    #[test]
    fn bearer_token_from_the_environment() {
        let (server, data) = serve(5000);
        server.require_auth(Some("Bearer tok-123"));
        std::env::set_var("DISKSYNTH_HTTP_TEST_TOKEN", "Bearer tok-123\n");
        let o = HttpOptions {
            auth: Some(HttpAuth::from_env("DISKSYNTH_HTTP_TEST_TOKEN").unwrap()),
            ..opts()
        };
        let dev = HttpDev::open(&server.url(), &o).unwrap();
        assert!(read(&dev, 0, 5000).unwrap() == data);
    }

    #[test]
    fn extra_headers_reach_the_server() {
        let (server, _) = serve(5000);
        let o = HttpOptions {
            headers: vec![("X-Disk".into(), "yes".into())],
            ..opts()
        };
        let dev = HttpDev::open(&server.url(), &o).unwrap();
        read(&dev, 0, 10).unwrap();
        assert!(server
            .log()
            .iter()
            .all(|r| r.header("x-disk") == Some("yes")));
        assert!(server
            .log()
            .iter()
            .all(|r| r.header("accept-encoding") == Some("identity")));
    }

    #[test]
    fn disk_cache_serves_a_reopened_device() {
        let (server, data) = serve((5 << 20) + 333);
        let dir = tempfile::tempdir().unwrap();
        let o = HttpOptions {
            cache_dir: Some(dir.path().to_owned()),
            ..no_readahead()
        };
        let ranges = [(0u64, 4096usize), (3 << 20, 100_000), ((5 << 20) + 1, 332)];
        {
            let dev = HttpDev::open(&server.url(), &o).unwrap();
            for &(off, len) in &ranges {
                assert!(read(&dev, off, len).unwrap() == data[off as usize..off as usize + len]);
            }
        }
        server.reset_counters();
        let dev = HttpDev::open(&server.url(), &o).unwrap();
        for &(off, len) in &ranges {
            assert!(read(&dev, off, len).unwrap() == data[off as usize..off as usize + len]);
        }
        assert_eq!(server.gets(), 0, "all from the cache");
        check_dev(&dev, &data, &[1 << 20]);
        drop(dev);

        // A replaced file has a new validator: new cache, new bytes.
        let new = random_bytes(77, data.len());
        server.replace(new.clone());
        let dev = HttpDev::open(&server.url(), &o).unwrap();
        assert!(read(&dev, 0, 4096).unwrap() == new[..4096]);
    }
}
