// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Runs the real `vhost-balloon` binary and drives it as QEMU would, with
//! the `vhost` crate's frontend: guest RAM is a memfd shared with
//! SET_MEM_TABLE, the virtqueues live in it, and the test plays the guest
//! driver by writing descriptors and PFNs there.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{
    Frontend, FrontendReqHandler, HandlerResult, VhostUserFrontend, VhostUserFrontendReqHandler,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: u64 = 16 << 20;
const QSIZE: u16 = 16;
const PAGE: u64 = 4096;
const F_STATS: u64 = 1 << 1;
const F_REPORTING: u64 = 1 << 5;
const F_PROTOCOL: u64 = 1 << 30;
const F_VERSION_1: u64 = 1 << 32;
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

fn memfd(size: u64) -> File {
    // SAFETY: the name is a NUL-terminated literal; the returned fd is checked and owned by File.
    let fd = unsafe { libc::memfd_create(c"balloon-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).unwrap();
    f
}

/// Bytes the memfd really holds.
fn allocated(f: &File) -> u64 {
    f.metadata().unwrap().blocks() * 512
}

struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Daemon {
        let child = Daemon::spawn(&dir.path().join("vu.sock"), extra);
        let d = Daemon { child, dir };
        wait_for(|| d.sock().exists(), "vhost-user socket");
        d
    }

    fn spawn(sock: &Path, extra: &[&str]) -> Child {
        let seccomp = std::env::var("VHOST_BALLOON_TEST_SECCOMP").unwrap_or_else(|_| "kill".into());
        Command::new(env!("CARGO_BIN_EXE_vhost-balloon"))
            .arg("--socket-path")
            .arg(sock)
            .args(["--seccomp", &seccomp, "--log-level", "debug"])
            .args(extra)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    }

    /// SIGKILLs the device (a crash) and waits until it is gone.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts a new device on the same socket (after [`Daemon::kill`]).
    fn restart(&mut self, extra: &[&str]) {
        let sock = self.sock();
        let _ = std::fs::remove_file(&sock);
        self.child = Daemon::spawn(&sock, extra);
        wait_for(|| sock.exists(), "vhost-user socket of the new device");
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("vu.sock")
    }

    fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "vhost-balloon exited"
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Counts config-change messages arriving on the backend request channel.
#[derive(Default)]
struct ConfigChanges(AtomicU64);

impl VhostUserFrontendReqHandler for ConfigChanges {
    fn handle_config_change(&self) -> HandlerResult<u64> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(0)
    }
}

/// One split virtqueue as the guest driver sees it.
struct Ring {
    base: u64,
    next_desc: u16,
    avail_idx: u16,
}

impl Ring {
    fn desc(&self) -> u64 {
        self.base
    }
    fn avail(&self) -> u64 {
        self.base + 0x1000
    }
    fn used(&self) -> u64 {
        self.base + 0x2000
    }
}

/// A fake guest: memfd RAM, the frontend connection, four rings.
struct Guest {
    file: File,
    mem: GuestMemoryMmap,
    fe: Frontend,
    rings: Vec<Ring>,
    kicks: Vec<EventFd>,
    _calls: Vec<EventFd>,
    changes: Arc<ConfigChanges>,
    /// Scratch area for PFN arrays and stats buffers.
    scratch: u64,
    /// Features the device offered.
    offered: u64,
}

impl Guest {
    fn connect(sock: &Path, file: File, features: u64) -> Guest {
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            MEM_SIZE as usize,
            Some(FileOffset::new(file.try_clone().unwrap(), 0)),
        )])
        .unwrap();
        let rings = (0..4u64)
            .map(|q| Ring {
                base: 0x10000 * (q + 1),
                next_desc: 0,
                avail_idx: 0,
            })
            .collect();
        Guest::start(sock, file, mem, rings, features)
    }

    /// What QEMU does when a backend comes back: a new connection, the
    /// rings where the driver left them, each restarted at its used index
    /// (QEMU could not ask the dead backend for its last avail index), and
    /// one kick per queue (the host notifiers start signalled).
    fn reconnect(self, sock: &Path, features: u64) -> Guest {
        let scratch = self.scratch;
        let mut g = Guest::start(sock, self.file, self.mem, self.rings, features);
        g.scratch = scratch;
        for k in &g.kicks {
            k.write(1).unwrap();
        }
        g
    }

    fn start(
        sock: &Path,
        file: File,
        mem: GuestMemoryMmap,
        rings: Vec<Ring>,
        features: u64,
    ) -> Guest {
        let mut fe = Frontend::connect(sock, 5).unwrap();
        fe.set_owner().unwrap();
        let offered = fe.get_features().unwrap();
        assert_eq!(offered & (1 << 2), 0, "DEFLATE_ON_OOM is off by default");
        fe.set_features(offered & (features | F_PROTOCOL | F_VERSION_1))
            .unwrap();
        let pf = fe.get_protocol_features().unwrap();
        let want = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::REPLY_ACK;
        assert!(pf.contains(want), "protocol features {pf:?}");
        fe.set_protocol_features(want).unwrap();
        assert_eq!(fe.get_queue_num().unwrap(), 5);

        let changes = Arc::new(ConfigChanges::default());
        let mut handler = FrontendReqHandler::new(changes.clone()).unwrap();
        handler.set_reply_ack_flag(true);
        fe.set_backend_request_fd(&handler.get_tx_raw_fd()).unwrap();
        thread::spawn(move || while handler.handle_request().is_ok() {});

        let region = mem.iter().next().unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
        fe.set_mem_table(&[VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: region.len(),
            userspace_addr: host,
            mmap_offset: 0,
            mmap_handle: file.as_raw_fd(),
        }])
        .unwrap();

        let (mut kicks, mut calls) = (Vec::new(), Vec::new());
        for (q, ring) in rings.iter().enumerate() {
            let used: u16 = mem.read_obj(GuestAddress(ring.used() + 2)).unwrap();
            fe.set_vring_num(q, QSIZE).unwrap();
            fe.set_vring_addr(
                q,
                &VringConfigData {
                    queue_max_size: QSIZE,
                    queue_size: QSIZE,
                    flags: 0,
                    desc_table_addr: host + ring.desc(),
                    used_ring_addr: host + ring.used(),
                    avail_ring_addr: host + ring.avail(),
                    log_addr: None,
                },
            )
            .unwrap();
            fe.set_vring_base(q, used).unwrap();
            let (k, c) = (EventFd::new(0).unwrap(), EventFd::new(0).unwrap());
            fe.set_vring_call(q, &c).unwrap();
            fe.set_vring_kick(q, &k).unwrap();
            fe.set_vring_enable(q, true).unwrap();
            kicks.push(k);
            calls.push(c);
        }
        Guest {
            file,
            mem,
            fe,
            rings,
            kicks,
            _calls: calls,
            changes,
            scratch: 0x8_0000,
            offered,
        }
    }

    /// Posts one chain of `(addr, len, flags)` buffers on queue `q` and kicks.
    fn post(&mut self, q: usize, bufs: &[(u64, u32, u16)]) {
        let r = &mut self.rings[q];
        let head = r.next_desc;
        for (i, &(addr, len, flags)) in bufs.iter().enumerate() {
            let idx = (head + i as u16) % QSIZE;
            let last = i + 1 == bufs.len();
            let next = (idx + 1) % QSIZE;
            let flags = if last { flags } else { flags | DESC_F_NEXT };
            let at = r.desc() + 16 * u64::from(idx);
            self.mem.write_obj(addr, GuestAddress(at)).unwrap();
            self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            self.mem
                .write_obj(if last { 0u16 } else { next }, GuestAddress(at + 14))
                .unwrap();
        }
        r.next_desc = (head + bufs.len() as u16) % QSIZE;
        let slot = r.avail() + 4 + 2 * u64::from(r.avail_idx % QSIZE);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        std::sync::atomic::fence(Ordering::SeqCst);
        r.avail_idx = r.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(r.avail_idx, GuestAddress(r.avail() + 2))
            .unwrap();
        self.kicks[q].write(1).unwrap();
    }

    fn used_idx(&self, q: usize) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.rings[q].used() + 2))
            .unwrap()
    }

    fn wait_used(&self, q: usize, n: u16) {
        wait_for(
            || self.used_idx(q) == n,
            &format!("used idx {n} on queue {q}"),
        );
    }

    /// Writes `pfns` to scratch memory and returns the buffer.
    fn pfn_buf(&mut self, pfns: &[u32]) -> (u64, u32) {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        let at = self.scratch;
        self.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        self.scratch += 0x1000;
        (at, bytes.len() as u32)
    }

    fn config(&mut self) -> (u32, u32) {
        let (_, buf) = self
            .fe
            .get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0u8; 8])
            .unwrap();
        (
            u32::from_le_bytes(buf[0..4].try_into().unwrap()),
            u32::from_le_bytes(buf[4..8].try_into().unwrap()),
        )
    }

    fn write_actual(&mut self, actual: u32) {
        self.fe
            .set_config(4, VhostUserConfigFlags::WRITABLE, &actual.to_le_bytes())
            .unwrap();
    }

    /// Fills every page with a pattern derived from its number.
    fn touch_all(&self) {
        for p in 0..MEM_SIZE / PAGE {
            self.mem
                .write_obj(p ^ 0x5a5a_5a5a, GuestAddress(p * PAGE + 8))
                .unwrap();
        }
    }

    fn page_word(&self, p: u64) -> u64 {
        self.mem.read_obj(GuestAddress(p * PAGE + 8)).unwrap()
    }
}

fn control(path: &Path, req: Value) -> Value {
    let mut s = UnixStream::connect(path).unwrap();
    s.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

#[test]
fn inflate_punches_exactly_those_pages_and_deflate_completes() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl.sock");
    let mut d = Daemon::start_in(dir, &["--control-socket", ctl.to_str().unwrap()]);
    let mut g = Guest::connect(&d.sock(), memfd(MEM_SIZE), F_STATS | F_REPORTING);
    assert_eq!(g.offered & (1 << 3), 0, "no FREE_PAGE_HINT without DMM");
    g.touch_all();
    let before = allocated(&g.file);
    assert_eq!(before, MEM_SIZE);

    // 64 contiguous pages, 3 scattered, a duplicate, and 2 outside RAM.
    let mut pfns: Vec<u32> = (1024..1088).collect();
    pfns.extend([2000, 2002, 3000, 1030, 4096, u32::MAX]);
    let buf = g.pfn_buf(&pfns);
    g.post(0, &[(buf.0, buf.1, 0)]);
    g.wait_used(0, 1);
    let released = 64 + 3;
    assert_eq!(allocated(&g.file), before - released * PAGE);
    // Pages below 1 MiB hold the rings and PFN buffers.
    for p in 256..MEM_SIZE / PAGE {
        let gone = (1024..1088).contains(&p) || [2000, 2002, 3000].contains(&p);
        let want = if gone { 0 } else { p ^ 0x5a5a_5a5a };
        assert_eq!(g.page_word(p), want, "page {p}");
    }

    // Malformed chains: device-writable, length not a multiple of 4. Completed, nothing released.
    let after = allocated(&g.file);
    let bad = g.pfn_buf(&[100, 101]);
    g.post(0, &[(bad.0, bad.1, DESC_F_WRITE)]);
    g.post(0, &[(bad.0, 7, 0)]);
    g.wait_used(0, 3);
    assert_eq!(allocated(&g.file), after);

    // Deflate the same pages.
    let buf = g.pfn_buf(&(1024..1088).collect::<Vec<_>>());
    g.post(1, &[(buf.0, buf.1, 0)]);
    g.wait_used(1, 1);

    // Free page report of 2 MiB at 8 MiB (device-writable buffer).
    g.post(3, &[(8 << 20, 2 << 20, DESC_F_WRITE)]);
    g.wait_used(3, 1);
    assert_eq!(allocated(&g.file), after - (2 << 20));
    assert_eq!(g.page_word(2048), 0);

    let s = control(&ctl, json!({"cmd": "stats"}));
    assert_eq!(s["ok"], true, "{s}");
    let c = &s["stats"];
    assert_eq!(c["pages_inflated"], 67, "{s}");
    assert_eq!(c["pages_released"], 67 + 512, "{s}");
    assert_eq!(c["invalid_pfns"], 2, "{s}");
    assert_eq!(c["bad_descriptors"], 2, "{s}");
    assert_eq!(c["inflate_chains"], 3, "{s}");
    assert_eq!(c["pages_deflated"], 64, "{s}");
    assert_eq!(c["pages_reported"], 512, "{s}");
    d.assert_alive();
}

#[test]
fn target_change_sends_config_change_and_state_survives_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl.sock");
    let mut d = Daemon::start_in(dir, &["--control-socket", ctl.to_str().unwrap()]);
    let file = memfd(MEM_SIZE);
    let mut g = Guest::connect(&d.sock(), file.try_clone().unwrap(), F_STATS);
    assert_eq!(g.config(), (0, 0));

    let a = control(
        &ctl,
        json!({"cmd": "set-balloon-target", "num_pages": 1000}),
    );
    assert_eq!(a, json!({"ok": true, "num_pages": 1000}));
    wait_for(
        || g.changes.0.load(Ordering::SeqCst) == 1,
        "config-change message",
    );
    assert_eq!(g.config(), (1000, 0));

    g.write_actual(256);
    // A driver write to num_pages is ignored and counted.
    g.fe.set_config(0, VhostUserConfigFlags::WRITABLE, &7u32.to_le_bytes())
        .unwrap();
    assert_eq!(g.config(), (1000, 256));
    let s = control(&ctl, json!({"cmd": "stats"}));
    assert_eq!(s["stats"]["actual"], 256, "{s}");
    assert_eq!(s["stats"]["bad_config_writes"], 1, "{s}");
    assert_eq!(s["stats"]["config_changes"], 1, "{s}");

    // QEMU goes away and comes back: the daemon serves again, state kept.
    drop(g);
    thread::sleep(Duration::from_millis(200));
    d.assert_alive();
    let mut g = Guest::connect(&d.sock(), file, F_STATS);
    assert_eq!(g.config(), (1000, 256));
    // The driver may have missed a target while the device was away
    // (actual != num_pages): the device tells it again.
    wait_for(
        || g.changes.0.load(Ordering::SeqCst) == 1,
        "config-change resent on reconnect",
    );
    control(&ctl, json!({"cmd": "set-balloon-target", "num_pages": 10}));
    wait_for(
        || g.changes.0.load(Ordering::SeqCst) == 2,
        "config-change after reconnect",
    );
    assert_eq!(g.config(), (10, 256));
    g.write_actual(10);
    // A reconnect with actual == num_pages sends nothing.
    drop(g);
    thread::sleep(Duration::from_millis(200));
    let g = Guest::connect(&d.sock(), memfd(MEM_SIZE), F_STATS);
    thread::sleep(Duration::from_millis(800));
    assert_eq!(g.changes.0.load(Ordering::SeqCst), 0);
    d.assert_alive();
}

/// A stand-in for libdmm's control socket, following docs/control-protocol.md.
#[derive(Default)]
struct FakeDmm {
    target: Mutex<u64>,
    actual: Mutex<u64>,
    released: Mutex<Vec<(String, u64, u64)>>,
    reclaimed: Mutex<Vec<(u64, u64)>>,
    /// (cmd, gpa, len) of every pin and unpin.
    pins: Mutex<Vec<(String, u64, u64)>>,
    guest: Mutex<BTreeMap<String, u64>>,
    subscribers: Mutex<Vec<UnixStream>>,
    /// Releases are recorded but not answered while set (a device killed mid-release).
    stall_releases: std::sync::atomic::AtomicBool,
}

impl FakeDmm {
    fn serve(self: &Arc<Self>, path: &Path) {
        let listener = UnixListener::bind(path).unwrap();
        let me = self.clone();
        thread::spawn(move || {
            for c in listener.incoming() {
                let me = me.clone();
                thread::spawn(move || me.conn(c.unwrap()));
            }
        });
    }

    fn conn(&self, s: UnixStream) {
        let mut w = s.try_clone().unwrap();
        for line in BufReader::new(s).lines() {
            let Ok(line) = line else { return };
            let req: Value = serde_json::from_str(&line).unwrap();
            let ranges = || -> Vec<(u64, u64)> {
                req["ranges"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap()))
                    .collect()
            };
            let answer = match req["cmd"].as_str().unwrap() {
                "stats" => {
                    json!({"ok": true, "stats": {"balloon_actual_pages": *self.actual.lock().unwrap()}, "guest": {}})
                }
                "subscribe-balloon" => {
                    let t = *self.target.lock().unwrap();
                    self.subscribers
                        .lock()
                        .unwrap()
                        .push(w.try_clone().unwrap());
                    json!({"ok": true, "num_pages": t})
                }
                "release" => {
                    let reason = req["reason"].as_str().unwrap().to_string();
                    let rs = ranges();
                    let pages: u64 = rs.iter().map(|r| r.1 / PAGE).sum();
                    self.released
                        .lock()
                        .unwrap()
                        .extend(rs.into_iter().map(|(g, l)| (reason.clone(), g, l)));
                    while self.stall_releases.load(Ordering::SeqCst) {
                        thread::sleep(Duration::from_millis(10));
                    }
                    json!({"ok": true, "pages": pages, "bytes": pages * PAGE, "ignored": 0})
                }
                "reclaim-back" => {
                    let rs = ranges();
                    let pages: u64 = rs.iter().map(|r| r.1 / PAGE).sum();
                    self.reclaimed.lock().unwrap().extend(rs);
                    json!({"ok": true, "pages": pages, "bytes": 0, "ignored": 0})
                }
                cmd @ ("pin" | "unpin") => {
                    let rs = ranges();
                    let pages: u64 = rs.iter().map(|r| r.1 / PAGE).sum();
                    self.pins
                        .lock()
                        .unwrap()
                        .extend(rs.into_iter().map(|(g, l)| (cmd.to_string(), g, l)));
                    json!({"ok": true, "pages": pages, "bytes": pages * PAGE, "ignored": 0})
                }
                "balloon-actual" => {
                    *self.actual.lock().unwrap() = req["num_pages"].as_u64().unwrap();
                    json!({"ok": true})
                }
                "guest-stats" => {
                    let v: BTreeMap<String, u64> =
                        serde_json::from_value(req["values"].clone()).unwrap();
                    *self.guest.lock().unwrap() = v;
                    json!({"ok": true})
                }
                other => {
                    json!({"ok": false, "error": {"code": "unknown-command", "message": other}})
                }
            };
            if w.write_all(format!("{answer}\n").as_bytes()).is_err() {
                return;
            }
        }
    }

    fn push_target(&self, n: u64) {
        *self.target.lock().unwrap() = n;
        for s in self.subscribers.lock().unwrap().iter_mut() {
            let _ = s.write_all(
                format!("{}\n", json!({"event": "balloon-target", "num_pages": n})).as_bytes(),
            );
        }
    }
}

#[test]
fn dmm_mode_forwards_releases_actual_targets_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let dmm_path = dir.path().join("dmm.sock");
    let fake = Arc::new(FakeDmm::default());
    *fake.target.lock().unwrap() = 500;
    *fake.actual.lock().unwrap() = 123;
    fake.serve(&dmm_path);
    let mut d = Daemon::start_in(
        dir,
        &["--dmm", dmm_path.to_str().unwrap(), "--stats-interval", "1"],
    );
    let file = memfd(MEM_SIZE);
    let mut g = Guest::connect(&d.sock(), file.try_clone().unwrap(), F_STATS | F_REPORTING);
    // Target and actual come back from DMM.
    assert_eq!(g.config(), (500, 123));
    assert_ne!(
        g.offered & (1 << 3),
        0,
        "FREE_PAGE_HINT is offered with DMM"
    );

    g.touch_all();
    let before = allocated(&g.file);
    let buf = g.pfn_buf(&[10, 11, 12, 40, 9999]);
    g.post(0, &[(buf.0, buf.1, 0)]);
    g.wait_used(0, 1);
    assert_eq!(
        *fake.released.lock().unwrap(),
        vec![
            ("balloon".to_string(), 10 * PAGE, 3 * PAGE),
            ("balloon".to_string(), 40 * PAGE, PAGE)
        ]
    );
    // DMM does the releasing, not the device.
    assert_eq!(allocated(&g.file), before);
    // Before touching them, the device pinned every ring: desc, avail and
    // used areas (page aligned, merged), once.
    let mut pins = fake.pins.lock().unwrap().clone();
    pins.sort();
    let rings: Vec<_> = g
        .rings
        .iter()
        .map(|r| {
            assert_eq!(
                (r.avail(), r.used()),
                (r.desc() + PAGE, r.desc() + 2 * PAGE)
            );
            ("pin".to_string(), r.desc(), 3 * PAGE)
        })
        .collect();
    assert_eq!(pins, rings);

    let buf = g.pfn_buf(&[12, 11]);
    g.post(1, &[(buf.0, buf.1, 0)]);
    g.wait_used(1, 1);
    assert_eq!(*fake.reclaimed.lock().unwrap(), vec![(11 * PAGE, 2 * PAGE)]);

    g.post(3, &[(4 << 20, 1 << 20, DESC_F_WRITE)]);
    g.wait_used(3, 1);
    assert_eq!(
        fake.released.lock().unwrap().last().unwrap(),
        &("report".to_string(), 4 << 20, 1 << 20)
    );

    g.write_actual(4);
    wait_for(
        || *fake.actual.lock().unwrap() == 4,
        "balloon-actual at DMM",
    );

    fake.push_target(777);
    // Two messages: the resend at connect (500 != 123) and the new target.
    wait_for(
        || g.changes.0.load(Ordering::SeqCst) >= 2,
        "config-change from a DMM target",
    );
    assert_eq!(g.config(), (777, 4));

    // Stats: the driver's buffer is parsed, forwarded, and returned after the interval.
    let mut stats = Vec::new();
    for (tag, val) in [(4u16, 111u64), (5, 222), (42, 3)] {
        stats.extend_from_slice(&tag.to_le_bytes());
        stats.extend_from_slice(&val.to_le_bytes());
    }
    g.mem.write_slice(&stats, GuestAddress(0xf_0000)).unwrap();
    g.post(2, &[(0xf_0000, stats.len() as u32, 0)]);
    wait_for(
        || fake.guest.lock().unwrap().get("free-memory") == Some(&111),
        "guest-stats at DMM",
    );
    assert_eq!(fake.guest.lock().unwrap().get("tag-42"), Some(&3));
    assert_eq!(g.used_idx(2), 0, "stats buffer is held until the next poll");
    g.wait_used(2, 1);
    d.assert_alive();
}

/// SIGKILLs a device in the middle of an inflate, with the driver's stats
/// buffer held, and starts another one: it gets back every chain the dead
/// one took and did not complete (the frontend restarts the rings at their
/// used index), releases those pages again (libdmm ignores pages already
/// ballooned), and the guest's statistics keep coming.
#[test]
fn a_restarted_device_takes_over_what_a_killed_one_left() {
    let dir = tempfile::tempdir().unwrap();
    let dmm_path = dir.path().join("dmm.sock");
    let fake = Arc::new(FakeDmm::default());
    *fake.target.lock().unwrap() = 300;
    fake.serve(&dmm_path);
    let args = ["--dmm", dmm_path.to_str().unwrap(), "--stats-interval", "1"];
    let mut d = Daemon::start_in(dir, &args);
    let mut g = Guest::connect(&d.sock(), memfd(MEM_SIZE), F_STATS | F_REPORTING);

    // The driver's stats buffer: held by the device between polls.
    let mut stats = Vec::new();
    for (tag, val) in [(4u16, 111u64), (5, 222)] {
        stats.extend_from_slice(&tag.to_le_bytes());
        stats.extend_from_slice(&val.to_le_bytes());
    }
    g.mem.write_slice(&stats, GuestAddress(0xf_0000)).unwrap();
    g.post(2, &[(0xf_0000, stats.len() as u32, 0)]);
    wait_for(
        || !fake.guest.lock().unwrap().is_empty(),
        "guest-stats at DMM",
    );

    let buf = g.pfn_buf(&[10, 11]);
    g.post(0, &[(buf.0, buf.1, 0)]);
    g.wait_used(0, 1);
    g.write_actual(2);
    wait_for(
        || *fake.actual.lock().unwrap() == 2,
        "balloon-actual at DMM",
    );

    // The next chain's release reaches DMM, and the device dies waiting for the answer.
    fake.stall_releases.store(true, Ordering::SeqCst);
    let buf = g.pfn_buf(&[20, 21, 22]);
    g.post(0, &[(buf.0, buf.1, 0)]);
    wait_for(
        || fake.released.lock().unwrap().len() == 2,
        "second release at DMM",
    );
    d.kill();
    assert_eq!(g.used_idx(0), 1, "the killed device completed the chain");
    fake.stall_releases.store(false, Ordering::SeqCst);
    fake.guest.lock().unwrap().clear();

    d.restart(&args);
    let mut g = g.reconnect(&d.sock(), F_STATS | F_REPORTING);
    // The chain the dead device took comes again and is completed.
    g.wait_used(0, 2);
    let released = fake.released.lock().unwrap().clone();
    let again = ("balloon".to_string(), 20 * PAGE, 3 * PAGE);
    assert_eq!(released[1..], [again.clone(), again], "{released:?}");
    // Target and actual from DMM.
    assert_eq!(g.config(), (300, 2));
    // The stats buffer comes back too: forwarded, then returned at the next poll.
    wait_for(
        || fake.guest.lock().unwrap().get("free-memory") == Some(&111),
        "guest-stats from the new device",
    );
    g.wait_used(2, 1);
    // The driver refills it; the new device keeps polling.
    fake.guest.lock().unwrap().clear();
    g.post(2, &[(0xf_0000, stats.len() as u32, 0)]);
    wait_for(
        || !fake.guest.lock().unwrap().is_empty(),
        "guest-stats again",
    );
    g.wait_used(2, 2);
    d.assert_alive();
}

#[test]
fn bad_arguments_are_named() {
    let bin = env!("CARGO_BIN_EXE_vhost-balloon");
    let run = |args: &[&str]| {
        let o = Command::new(bin).args(args).output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--socket-path", "/nonexistent-dir/x.sock"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("/nonexistent-dir"), "{err}");
    let (code, err) = run(&[
        "--socket-path",
        "/tmp/x.sock",
        "--dmm",
        "/tmp/a",
        "--control-socket",
        "/tmp/b",
    ]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--dmm") && err.contains("--control-socket"),
        "{err}"
    );
    let (code, err) = run(&["--socket-path", "/tmp/x.sock", "--stats-interval", "soon"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("soon"), "{err}");
    let (code, err) = run(&["--socket-path", "/tmp/x.sock", "--seccomp", "maybe"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("maybe"), "{err}");
    let file = tempfile::NamedTempFile::new().unwrap();
    let ctl = file.path().to_str().unwrap();
    let (code, err) = run(&[
        "--socket-path",
        "/tmp/x.sock",
        "--control-socket",
        ctl,
        "--seccomp",
        "off",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains(ctl) && err.contains("not a socket"), "{err}");
    let (code, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
}
