//! One seed's world: the fake org, the sandbox, the ledger, the main process (cycles, kills,
//! restarts) and the second processes beside it (a long-lived REST source, `quo-sync plan`,
//! `quo-sync once`), each judged as it finishes.

use super::*;

pub(super) fn crm_id(i: usize) -> String {
    format!("0035g00000CH{i:04}AAA")
}

pub(super) fn crm_record(i: usize) -> Value {
    json!({
        "Id": crm_id(i),
        "FirstName": format!("Chaos{i}"),
        "LastName": "Rotor",
        "Email": format!("chaos{i}@example.com"),
        "Phone": format!("+1415555{:04}", 9100 + i),
        "MobilePhone": null,
        "Title": "Engineer",
        "Account": { "attributes": { "type": "Account" }, "Name": format!("Acme {i}") },
    })
}

/// Tokens a process's REST source was granted.
pub(super) fn grants(source: &Source) -> u64 {
    match source {
        Source::Rest(rest) => rest.tokens_fetched(),
        Source::Csv(_) => 0,
    }
}

/// Injected Quo faults that fired, summed.
pub(super) fn fired(c: &FaultCounters) -> u64 {
    c.status_answers
        + c.delayed_requests
        + c.dropped_after_write
        + c.dropped_after_write_ratio
        + c.lagging_list_answers
        + c.repeated_page_tokens
}

/// One seed's world: the org, the sandbox, the ledger, the main process and the others.
pub(super) struct World {
    pub(super) rng: StdRng,
    pub(super) crm: FakeSalesforce,
    pub(super) sandbox: SandboxHandle,
    pub(super) dir: tempfile::TempDir,
    pub(super) config: PathBuf,
    /// The ledger as the env override that names it (`QUO_SYNC__LEDGER__PATH` or `…__URL`).
    pub(super) ledger_env: (&'static str, String),
    pub(super) ledger: LedgerTarget,
    pub(super) main: Option<SyncContext>,
    /// Whether the main process holds an access token it has not seen expire.
    pub(super) main_has_token: bool,
    /// Whether the main process has been counted in `starts` (at its first finished cycle).
    pub(super) main_counted: bool,
    /// Grants to main processes that have ended.
    pub(super) main_fetched: u64,
    pub(super) others: Vec<SourceProcess>,
    /// Output of every binary run.
    pub(super) binary_logs: String,
    /// Process starts that then finished a cycle or a read: each needed a grant of its own.
    pub(super) starts: u64,
    pub(super) mapper: Option<Mapper>,
    pub(super) log: Log,
    pub(super) policy: &'static str,
    pub(super) records: usize,
    pub(super) n: u32,
    /// Whether a cycle has completed (lagging lists are drawn only after, as in the CSV world).
    pub(super) cycled: bool,
    pub(super) tally: TokenTally,
}

impl World {
    pub(super) async fn new(seed: u64, pg_url: Option<String>) -> World {
        logs();
        let mut rng = StdRng::seed_from_u64(seed);
        let policy = crate::POLICIES[(seed % 3) as usize];
        let patch_mode = if rng.random_bool(0.5) {
            PatchMode::Merge
        } else {
            PatchMode::Replace
        };
        let conflict_on_duplicate = rng.random_bool(0.5);
        let mut desk = TokenDesk::new(CLIENT_ID, SECRET, REFRESH, Duration::from_secs(600));
        desk.rotate = true;
        desk.reuse_detection = true;
        let crm = FakeSalesforce::start((0..INITIAL).map(crm_record).collect(), desk, 4).await;
        let sandbox = SandboxHandle::start(SandboxConfig {
            requests_per_second: 0,
            patch_mode,
            conflict_on_duplicate,
            ..SandboxConfig::default()
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let credentials = Credentials {
            client_id: CLIENT_ID,
            secret: SECRET,
            refresh: REFRESH,
        };
        let conflict = format!("conflict = \"{policy}\"");
        let config = salesforce_config(
            dir.path(),
            &crm.base_url,
            &credentials,
            &[
                ("timeout = \"30s\"", "timeout = \"10s\""),
                // Quick Quo retries, as the CSV world's config has them.
                (
                    "source = \"quo-sync\"",
                    "source = \"quo-sync\"\nmax_retries = 10\nmax_backoff = \"50ms\"",
                ),
                ("conflict = \"newest\"", &conflict),
            ],
        );
        let postgres = pg_url.is_some();
        let (ledger_env, ledger) = match pg_url {
            Some(url) => (
                ("QUO_SYNC__LEDGER__URL", url.clone()),
                LedgerTarget::parse(&url).unwrap(),
            ),
            None => {
                let path = dir.path().join("ledger.db");
                (
                    ("QUO_SYNC__LEDGER__PATH", path.display().to_string()),
                    LedgerTarget::Sqlite(path),
                )
            }
        };
        trace(|| {
            format!(
                "tokens seed {seed}: {}, conflict {policy}, {patch_mode:?} PATCH, 409 {conflict_on_duplicate}",
                if postgres { "PostgreSQL" } else { "SQLite" }
            )
        });
        let mut world = World {
            rng,
            crm,
            sandbox,
            config,
            ledger_env,
            ledger,
            dir,
            main: None,
            main_has_token: false,
            main_counted: false,
            main_fetched: 0,
            others: Vec::new(),
            binary_logs: String::new(),
            starts: 0,
            mapper: None,
            log: Log::default(),
            policy,
            records: INITIAL,
            n: 0,
            cycled: false,
            tally: TokenTally {
                seeds: 1,
                postgres_seeds: u64::from(postgres),
                ..TokenTally::default()
            },
        };
        let ctx = world.main().await;
        let defs = ctx.client.custom_fields().await.expect("custom fields");
        world.mapper = Some(Mapper::new(&ctx.mapping, &defs).expect("the mapping builds"));
        for i in 0..INITIAL {
            let fields = world.crm_fields(&crm_record(i));
            for (field, value) in fields {
                world.log.put(&crm_id(i), &field, Side::Crm, value);
            }
        }
        world
    }

    pub(super) fn mapper(&self) -> &Mapper {
        self.mapper.as_ref().expect("built at start")
    }

    /// A Salesforce contact's managed values as the sync sees them (through the config's
    /// pointers and the mapping).
    pub(super) fn crm_fields(&self, record: &Value) -> BTreeMap<String, Value> {
        let pointers = [
            ("first_name", "/FirstName"),
            ("last_name", "/LastName"),
            ("email", "/Email"),
            ("phone", "/Phone"),
            ("mobile", "/MobilePhone"),
            ("title", "/Title"),
            ("account", "/Account/Name"),
        ];
        let id = record["Id"].as_str().unwrap();
        let source = SourceRecord {
            external_id: quo_sync::domain::ExternalId::parse(id).unwrap(),
            fields: pointers
                .iter()
                .filter_map(|(k, p)| {
                    let v = record.pointer(p)?.as_str()?;
                    Some((k.to_string(), v.to_string()))
                })
                .collect(),
            updated_at: None,
            location: id.to_string(),
        };
        self.mapper()
            .map(&source)
            .unwrap_or_else(|e| panic!("{id}: the test typed a value the mapping refuses: {e}"))
            .fields()
    }

    /// A contact's managed values as the sync sees them.
    pub(super) fn quo_fields(&self, contact: &Value) -> BTreeMap<String, Value> {
        let contact: quo_sync::quo::types::Contact =
            serde_json::from_value(contact.clone()).expect("a sandbox contact decodes");
        self.mapper().from_contact(&contact).fields()
    }

    pub(super) fn contacts_by_record(&self) -> BTreeMap<String, Vec<Value>> {
        let mut by: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for c in self.sandbox.contacts() {
            if let Some(id) = c["externalId"].as_str().filter(|id| !id.is_empty()) {
                by.entry(id.to_string()).or_default().push(c);
            }
        }
        by
    }

    pub(super) fn next_n(&mut self) -> u32 {
        self.n += 1;
        self.n
    }

    pub(super) async fn main(&mut self) -> &SyncContext {
        if self.main.is_none() {
            let ledger = (self.ledger_env.0, self.ledger_env.1.clone());
            self.main = Some(example_context_on(&self.config, &self.sandbox, ledger).await);
            self.main_has_token = false;
            self.main_counted = false;
        }
        self.main.as_ref().unwrap()
    }

    /// Grants to the main processes so far.
    pub(super) fn main_grants(&self) -> u64 {
        self.main_fetched + self.main.as_ref().map_or(0, |ctx| grants(&ctx.source))
    }

    /// Judges a finished run (a cycle, a binary's exit): a failure is allowed only when an
    /// injected Quo fault fired during it (`fired_before` is the count before), and never for
    /// credentials.
    pub(super) fn judge(
        &mut self,
        what: &str,
        failure: Option<String>,
        auth: bool,
        fired_before: u64,
    ) {
        let Some(failure) = failure else {
            return;
        };
        let fired_now = fired(&self.sandbox.fault_counters());
        assert!(
            !auth && !failure.contains("invalid_grant"),
            "{what} failed on its credentials: {failure}"
        );
        assert!(
            fired_now > fired_before,
            "{what} failed with no injected Quo fault firing: {failure}"
        );
        trace(|| format!("{what} failed under a fault: {failure}"));
        self.tally.failed_runs += 1;
    }

    pub(super) fn judge_cycle(
        &mut self,
        what: &str,
        cycle: Result<CycleReport, SyncError>,
        before: u64,
    ) {
        match cycle {
            Ok(report) => {
                self.cycled = true;
                self.main_has_token = true;
                if !self.main_counted {
                    self.main_counted = true;
                    self.starts += 1;
                }
                trace(|| format!("{what}: {}", crate::world::summary(&report)));
            }
            Err(e) => {
                // Where it stopped is unknown: it may not hold a token.
                self.main_has_token = false;
                self.judge(what, Some(e.to_string()), e.is_auth_failure(), before);
            }
        }
    }

    pub(super) async fn main_cycle(&mut self) {
        let before = fired(&self.sandbox.fault_counters());
        let cycle = run_cycle(self.main().await, Mode::Apply).await;
        self.judge_cycle("a main cycle", cycle, before);
    }

    /// A main cycle and, beside it after a random pause, a read by another process; grants are
    /// slowed by a random delay so refreshes overlap.
    pub(super) async fn main_cycle_beside_other(&mut self) {
        let delay = Duration::from_millis(self.rng.random_range(0..150));
        let pause = Duration::from_millis(self.rng.random_range(0..60));
        let pick = self.pick_other().await;
        self.crm.desk().set_delay(delay);
        self.main().await;
        let before = fired(&self.sandbox.fault_counters());
        let ctx = self.main.as_ref().unwrap();
        let other = &self.others[pick];
        let (cycle, read) = tokio::join!(run_cycle(ctx, Mode::Apply), async {
            tokio::time::sleep(pause).await;
            other.read().await
        });
        self.crm.desk().set_delay(Duration::ZERO);
        self.judge_cycle("a main cycle beside another process", cycle, before);
        let n = read.unwrap_or_else(|e| panic!("the other process's read: {e}"));
        assert_eq!(n, self.records as u64, "the other process read everything");
    }

    /// An existing other process, or a new one (then counted as a start).
    pub(super) async fn pick_other(&mut self) -> usize {
        if self.others.is_empty() || (self.others.len() < 3 && self.rng.random_bool(0.3)) {
            self.others
                .push(SourceProcess::start(&self.config, &self.ledger).await);
            self.starts += 1;
            return self.others.len() - 1;
        }
        self.rng.random_range(0..self.others.len())
    }

    pub(super) async fn other_read(&mut self) {
        let pick = self.pick_other().await;
        let n = self.others[pick]
            .read()
            .await
            .unwrap_or_else(|e| panic!("another process's read: {e}"));
        assert_eq!(n, self.records as u64, "another process read everything");
        // Now and then that process ends.
        if self.rng.random_bool(0.2) {
            let other = self.others.swap_remove(pick);
            other.ledger.close().await;
        }
    }

    /// The real binary, `command` (`plan` or `once`), on the same ledger.
    pub(super) fn binary(&self, command: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"));
        c.args([command, "--config"])
            .arg(&self.config)
            .env_remove("QUO_SYNC_CONFIG")
            .env("QUO_SYNC__QUO__BASE_URL", self.sandbox.base_url())
            .env("QUO_API_KEY", self.sandbox.api_key())
            .env("QUO_SYNC__QUO__REQUESTS_PER_SECOND", "1000")
            .env(self.ledger_env.0, &self.ledger_env.1)
            .env("QUO_SYNC__REVERSE__POLL_INTERVAL", "1ms")
            .env("QUO_SYNC__LOG__FORMAT", "json")
            .env("QUO_SYNC__LOG__LEVEL", "info")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// A binary's run: exit 0, or 1 under a Quo fault that fired (never 2, a refused credential).
    pub(super) fn record_binary(&mut self, command: &str, out: std::process::Output, before: u64) {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let code = out.status.code();
        let failure = (code != Some(0)).then(|| format!("exit {code:?}:\n{text}"));
        self.judge(
            &format!("`quo-sync {command}`"),
            failure,
            code == Some(2),
            before,
        );
        self.binary_logs.push_str(&text);
        self.starts += u64::from(code == Some(0));
    }

    /// `quo-sync plan` (a dry run: it reads the CRM with the shared token) beside a main cycle.
    pub(super) async fn plan_beside_main(&mut self) {
        let delay = Duration::from_millis(self.rng.random_range(0..100));
        self.crm.desk().set_delay(delay);
        let mut plan = self.binary("plan");
        self.main().await;
        let before = fired(&self.sandbox.fault_counters());
        let ctx = self.main.as_ref().unwrap();
        let (cycle, out) = tokio::join!(run_cycle(ctx, Mode::Apply), plan.output());
        self.crm.desk().set_delay(Duration::ZERO);
        self.judge_cycle("a main cycle beside `plan`", cycle, before);
        self.record_binary("plan", out.unwrap(), before);
    }

    /// `quo-sync once` between main cycles (one writer at a time).
    pub(super) async fn once_between(&mut self) {
        let before = fired(&self.sandbox.fault_counters());
        let out = self.binary("once").output().await.unwrap();
        self.record_binary("once", out, before);
        self.cycled = true;
    }

    /// The main process dies, mid-cycle when it holds a live access token (never inside its own
    /// token request): at a random moment up to 40 ms in, or the moment a write reaches Quo
    /// (requests slowed to 20 ms so it is still in flight); `at_write` picks which, else a coin.
    /// Its next cycle starts a new one.
    pub(super) async fn kill_main(&mut self, at_write: Option<bool>) {
        let Some(ctx) = self.main.take() else {
            return;
        };
        let mut mid_write = false;
        if self.main_has_token {
            let at_write = at_write.unwrap_or_else(|| self.rng.random_bool(0.5));
            let after = Duration::from_millis(self.rng.random_range(0..40));
            let mut in_flight = self.sandbox.writes_in_flight();
            if at_write {
                self.sandbox.set_latency(Duration::from_millis(20));
            }
            let cycle = ctx.clone();
            let mut task = tokio::spawn(async move { run_cycle(&cycle, Mode::Apply).await });
            let ended = if at_write {
                tokio::select! {
                    _ = in_flight.wait_for(|n| *n > 0) => false,
                    _ = &mut task => true,
                }
            } else {
                tokio::time::timeout(after, &mut task).await.is_ok()
            };
            mid_write = *in_flight.borrow_and_update() > 0;
            task.abort();
            if !ended {
                let _ = task.await;
            }
            self.sandbox.set_latency(Duration::ZERO);
            tokio::time::timeout(Duration::from_secs(10), in_flight.wait_for(|n| *n == 0))
                .await
                .expect("the killed process's writes land within 10 s")
                .expect("sandbox running");
            trace(|| format!("main killed (at a write: {at_write}, mid-write: {mid_write})"));
        } else {
            trace(|| "main killed between cycles".into());
        }
        self.main_fetched += grants(&ctx.source);
        ctx.ledger.close().await;
        self.tally.kills += 1;
        self.tally.mid_write += u64::from(mid_write);
        self.main_has_token = false;
    }

    pub(super) async fn close(mut self) {
        if let Some(ctx) = self.main.take() {
            ctx.ledger.close().await;
        }
        for other in self.others.drain(..) {
            other.ledger.close().await;
        }
        self.sandbox.shutdown().await;
        drop(self.dir);
    }
}
