//! `tributary demo`'s whole loop, run through the platform itself: one in-process
//! `tributary dev` (coordinator, worker, gateway, attribution, reward log) on a loopback
//! port, driven only through its HTTP API, exactly as a user's client would drive it.
//!
//! 1. Contributors get API keys and upload their slices of a datanet; a copier uploads a
//!    rival's rows and some broken ones, and the upload report says what was refused.
//! 2. The base model answers held-out questions (exact match, over the OpenAI API).
//! 3. A builder's job fine-tunes a LoRA adapter on the datanet (live progress); the
//!    adapter is served as soon as the job succeeds.
//! 4. The adapter answers the same questions; every answer is attributed to the
//!    contributors whose examples made it likely, and its fee goes into the reward log.
//! 5. The reward log is verified, balances are shown (the copier's is zero), and the
//!    dashboard's URL is printed (`--serve` keeps it running).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use serde_json::{Value, json};

use super::demo::DemoArgs;
use super::demo_data::{self, CONTRIBUTORS, Example};
use super::dev::{DevArgs, DevServer};
use super::job::{Api, Endpoint};

/// The datanet the contributors upload to.
const DATANET: &str = "units";
/// The adapter the job trains (its served name).
const ADAPTER: &str = "units-bot";
/// Who submits the fine-tune: the adapter's builder, paid the builder share of each fee.
const BUILDER: &str = "studio";
/// A contributor who re-uploads a rival's rows and some broken ones.
const COPIER: &str = "eve";
/// Answers are cut at this many tokens (the house format needs fewer).
const MAX_ANSWER_TOKENS: u64 = 12;
/// How long the demo waits for every answer's attribution and reward.
const ATTRIBUTION_WAIT: Duration = Duration::from_secs(600);

/// The base model the platform serves and fine-tunes.
pub struct Base {
    /// A Hugging Face checkpoint directory.
    pub dir: PathBuf,
    /// Its name in the OpenAI API's `model`.
    pub name: String,
}

/// Exact-match results on the held-out questions.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExactMatch {
    pub correct: usize,
    pub total: usize,
    /// (question, expected, answer, request id) of every held-out example.
    pub answers: Vec<(String, String, String, String)>,
}

impl ExactMatch {
    fn rate(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }
}

/// `dev`'s arguments, parsed as its command line would be.
#[derive(Parser)]
struct DevCommand {
    #[command(flatten)]
    dev: DevArgs,
}

/// The platform the demo drives, and what each step left for the later ones.
struct Loop {
    args: DemoArgs,
    base: Base,
    server: DevServer,
    stop: tokio::sync::oneshot::Sender<()>,
    admin: Api,
    /// API keys by owner.
    keys: BTreeMap<String, String>,
    train: Vec<Example>,
    held_out: Vec<Example>,
    uploads: BTreeMap<String, Value>,
    before: ExactMatch,
    after: ExactMatch,
    job: Value,
    attributions: Vec<Value>,
    rewards: Value,
    started: Instant,
}

fn api(url: &str, key: Option<&str>) -> anyhow::Result<Api> {
    Api::new(&Endpoint {
        coordinator: url.to_string(),
        api_key: key.map(str::to_string),
    })
}

/// Runs the whole loop on `base`.
pub async fn run(args: DemoArgs, base: Base, started: Instant) -> anyhow::Result<()> {
    const STEPS: usize = 6;
    let step = |i: usize, name: &str| println!("{i}/{STEPS} {name}");

    step(1, "platform");
    let mut run = start(args, base, started).await?;
    let outcome = async {
        step(2, "contributors and their datanet");
        contributors(&mut run).await?;
        step(3, "held-out exact match, base model (over the OpenAI API)");
        run.before = exact_match(&run, &run.base.name).await?;
        step(4, "fine-tune (a job on the platform)");
        finetune(&mut run).await?;
        step(5, "held-out exact match, with the adapter");
        run.after = exact_match(&run, ADAPTER).await?;
        step(6, "attribution and rewards");
        attribute(&mut run).await?;
        summary(&run)
    }
    .await;
    let serve = run.args.serve && outcome.is_ok();
    if serve {
        println!(
            "\nserving until Ctrl-C: dashboard {}/ (log in with the admin key {})",
            run.server.url,
            run.server.admin_key.as_deref().unwrap_or("-")
        );
        super::cluster::terminate().await;
    }
    let _ = run.stop.send(());
    run.server.wait().await?;
    outcome
}

async fn start(args: DemoArgs, base: Base, started: Instant) -> anyhow::Result<Loop> {
    let data = args.out.join("platform");
    let allow = std::fs::canonicalize(&args.out)
        .with_context(|| format!("resolving {}", args.out.display()))?;
    let port = args.port.to_string();
    let dev = DevCommand::try_parse_from([
        "dev".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--workers".as_ref(),
        "1".as_ref(),
        "--http".as_ref(),
        format!("127.0.0.1:{port}").as_ref(),
        "--allow-path".as_ref(),
        allow.as_os_str(),
        "--base-model".as_ref(),
        base.dir.as_os_str(),
        "--served-name".as_ref(),
        base.name.as_ref(),
        "--attribution".as_ref(),
        "on".as_ref(),
        "--reward-window-ms".as_ref(),
        "200".as_ref(),
        "--attribution-defer-ms".as_ref(),
        "300".as_ref(),
    ] as [&std::ffi::OsStr; 19])
    .context("dev's arguments")?
    .dev;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = super::dev::start(&dev, async move {
        let _ = stopped.await;
    })
    .await
    .context("starting the platform")?;
    let admin = api(&server.url, server.admin_key.as_deref())?;
    println!(
        "    tributary dev on {}: coordinator, 1 worker, OpenAI API serving {}, attribution on, reward log in {}",
        server.url,
        base.name,
        data.join("ledger").display()
    );
    let (train, held_out) = demo_data::datanet(args.examples, args.held_out);
    Ok(Loop {
        args,
        base,
        server,
        stop,
        admin,
        keys: BTreeMap::new(),
        train,
        held_out,
        uploads: BTreeMap::new(),
        before: ExactMatch::default(),
        after: ExactMatch::default(),
        job: Value::Null,
        attributions: Vec::new(),
        rewards: Value::Null,
        started,
    })
}

/// A new API key for `owner` with `scopes`, made by the admin.
async fn key(run: &mut Loop, owner: &str, scopes: &[&str]) -> anyhow::Result<Api> {
    let body = json!({"owner": owner, "scopes": scopes}).to_string();
    let made = run.admin.post("/v1/keys", body, "creating a key").await?;
    let secret = made["key"].as_str().context("no key in the answer")?;
    run.keys.insert(owner.to_string(), secret.to_string());
    api(&run.server.url, Some(secret))
}

async fn contributors(run: &mut Loop) -> anyhow::Result<()> {
    let create = json!({
        "name": DATANET,
        "description": "Unit conversions answered in a house format (`7000 m`), one unit family per contributor.",
        "license": "CC-BY-4.0",
    });
    run.admin
        .post("/v1/datanets", create.to_string(), "creating the datanet")
        .await?;
    let dir = run.args.out.join("datanet");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut uploads: Vec<(String, String)> = CONTRIBUTORS
        .iter()
        .map(|c| {
            let lines: Vec<String> = run
                .train
                .iter()
                .filter(|e| e.contributor == c.name)
                .map(Example::jsonl)
                .collect();
            (c.name.to_string(), lines.join("\n") + "\n")
        })
        .collect();
    uploads.push((COPIER.to_string(), demo_data::copier_upload(&run.train, 10)));
    for (who, body) in uploads {
        let path = dir.join(format!("{who}.jsonl"));
        std::fs::write(&path, &body).with_context(|| format!("writing {}", path.display()))?;
        let client = key(run, &who, &["contribute"]).await?;
        let report = client
            .post_bytes(
                &format!("/v1/datanets/{DATANET}/uploads"),
                body.into_bytes(),
                "application/x-ndjson",
                &format!("{who}'s upload"),
            )
            .await?;
        let rejected = report["rejected"].as_array().map_or(0, Vec::len);
        println!(
            "    {who:<6} {:>3} rows: {:>3} accepted, {:>2} duplicates, {:>2} near-duplicates, {:>2} rejected",
            report["rows"],
            report["accepted"],
            report["duplicates"],
            report["near_duplicates"],
            rejected
        );
        for r in report["rejected"].as_array().into_iter().flatten().take(3) {
            println!(
                "           line {}: {} ({})",
                r["line"],
                r["reason"].as_str().unwrap_or("?"),
                r["field"]
                    .as_str()
                    .filter(|f| !f.is_empty())
                    .unwrap_or("whole line")
            );
        }
        run.uploads.insert(who, report);
    }
    let shown = run
        .admin
        .get(&format!("/v1/datanets/{DATANET}"), "the datanet")
        .await?;
    let head = shown["versions"]
        .as_array()
        .and_then(|v| v.last())
        .cloned()
        .unwrap_or_default();
    println!(
        "    datanet {DATANET}: version {} with {} entries (copies are recorded, trained on once); {} questions held out (numbers never seen in training)",
        head["number"],
        head["entries"],
        run.held_out.len()
    );
    Ok(())
}

/// Greedy answers to every held-out question from `model`, all in flight at once (the
/// server batches them).
async fn exact_match(run: &Loop, model: &str) -> anyhow::Result<ExactMatch> {
    let t0 = Instant::now();
    let client = match run.keys.get(BUILDER) {
        Some(k) => api(&run.server.url, Some(k))?,
        None => api(&run.server.url, run.server.admin_key.as_deref())?,
    };
    let client = std::sync::Arc::new(client);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, e) in run.held_out.iter().enumerate() {
        let body = json!({
            "model": model,
            "messages": e.prompt_messages(),
            "max_tokens": MAX_ANSWER_TOKENS,
            "temperature": 0,
        })
        .to_string();
        let client = client.clone();
        tasks.spawn(async move {
            let r = client
                .post("/v1/chat/completions", body, "a chat completion")
                .await;
            (i, r)
        });
    }
    let mut answers = vec![(String::new(), String::new()); run.held_out.len()];
    while let Some(done) = tasks.join_next().await {
        let (i, r) = done.context("a request task")?;
        let r = r?;
        let text = r["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_string();
        let id = r["id"].as_str().unwrap_or_default().to_string();
        if let Some(slot) = answers.get_mut(i) {
            *slot = (text, id);
        }
    }
    let mut out = ExactMatch::default();
    for (e, (answer, id)) in run.held_out.iter().zip(answers) {
        out.correct += usize::from(answer == e.answer);
        out.total += 1;
        out.answers
            .push((e.question.clone(), e.answer.clone(), answer, id));
    }
    println!(
        "    exact match {}/{} = {:.0} % ({:.1} s)",
        out.correct,
        out.total,
        out.rate() * 100.0,
        t0.elapsed().as_secs_f64()
    );
    Ok(out)
}

async fn finetune(run: &mut Loop) -> anyhow::Result<()> {
    let builder = key(run, BUILDER, &["build", "inference"]).await?;
    let steps = run.args.steps.unwrap_or(20);
    let spec = json!({
        "name": ADAPTER,
        "base_model": run.base.dir.to_string_lossy(),
        "data": format!("datanet://{DATANET}@latest"),
        "lora": {
            "rank": 8, "alpha": 16.0, "dropout": 0.0,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        },
        "train": {
            "steps": steps, "batch_size": 8, "lr": 2e-3, "warmup": steps.saturating_sub(1).min(3),
            "seed": run.args.seed, "eval_fraction": 0.05,
        },
    });
    let t0 = Instant::now();
    let submitted = builder
        .post("/v1/jobs", spec.to_string(), "submitting the job")
        .await?;
    let id = submitted["id"].as_str().context("no job id")?.to_string();
    println!(
        "    job {id} submitted by {BUILDER} (dashboard: {}/jobs/{id})",
        run.server.url
    );
    let rec = super::job::follow(&builder, &id, true).await?;
    if rec["state"] != "succeeded" {
        bail!(
            "job {id} ended {}: {}",
            rec["state"],
            rec["error"].as_str().unwrap_or("no reason given")
        );
    }
    let digest = rec["adapter_digest"].as_str().unwrap_or_default();
    println!(
        "    {} steps in {:.0} s, final train loss {}; adapter {} served as {ADAPTER}",
        rec["progress"]["total_steps"],
        t0.elapsed().as_secs_f64(),
        rec["progress"]["loss"]
            .as_f64()
            .map_or("-".into(), |l| format!("{l:.3}")),
        digest.get(..16).unwrap_or(digest)
    );
    // The adapter in PEFT's format, as anyone with access would download it.
    let dir = run.args.out.join("adapter");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        let bytes = builder
            .get_bytes(&format!("/v1/adapters/{ADAPTER}/files/{file}"), file)
            .await?;
        std::fs::write(dir.join(file), bytes)
            .with_context(|| format!("writing {}", dir.join(file).display()))?;
    }
    println!("    PEFT files downloaded to {}", dir.display());
    run.job = rec;
    Ok(())
}

/// Waits for each adapter answer's attribution record and reward, then reads the log.
async fn attribute(run: &mut Loop) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let ids: Vec<&str> = run.after.answers.iter().map(|a| a.3.as_str()).collect();
    let mut records: Vec<Option<Value>> = vec![None; ids.len()];
    loop {
        for (id, slot) in ids.iter().zip(records.iter_mut()) {
            if slot.is_none()
                && let Ok(rec) = run.admin.get(&format!("/v1/attributions/{id}"), id).await
                && !rec["reward"].is_null()
            {
                *slot = Some(rec);
            }
        }
        let done = records.iter().filter(|r| r.is_some()).count();
        if done == ids.len() {
            break;
        }
        if t0.elapsed() > ATTRIBUTION_WAIT {
            bail!(
                "only {done} of {} answers were attributed and paid within {} s",
                ids.len(),
                ATTRIBUTION_WAIT.as_secs()
            );
        }
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            print!(
                "\r    attributing answers: {done}/{} paid ({:.0} s)",
                ids.len(),
                t0.elapsed().as_secs_f64()
            );
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "\r    attributing answers: {n}/{n} attributed and paid ({:.0} s)",
        t0.elapsed().as_secs_f64(),
        n = ids.len()
    );
    run.attributions = records.into_iter().flatten().collect();
    // One answer per contributor's skill: whose data made it likely.
    let per_skill = (run.after.answers.len() / CONTRIBUTORS.len()).max(1);
    for (answer, rec) in run
        .after
        .answers
        .iter()
        .zip(&run.attributions)
        .step_by(per_skill)
    {
        show_attribution(answer, rec);
    }
    run.rewards = run.admin.get("/v1/rewards", "the reward log").await?;
    let who = run
        .admin
        .get(
            &format!("/v1/adapters/{ADAPTER}/contributors"),
            "the adapter's contributors",
        )
        .await?;
    let units = run.rewards["balances"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let total: u64 = units.values().filter_map(Value::as_u64).sum();
    println!(
        "\n    reward log: {} entries, {} rewards, verified {}",
        run.rewards["entries"],
        run.rewards["records"],
        if run.rewards["ok"] == true {
            "ok"
        } else {
            "FAILED"
        }
    );
    println!(
        "    {:<8} {:>8} {:>12} {:>7}",
        "who", "accepted", "reward", "share"
    );
    let mut names: Vec<String> = CONTRIBUTORS.iter().map(|c| c.name.to_string()).collect();
    names.extend([COPIER.to_string(), BUILDER.to_string()]);
    for name in names {
        let amount = units.get(&name).and_then(Value::as_u64).unwrap_or(0);
        let accepted = run
            .uploads
            .get(&name)
            .map_or("-".into(), |u| u["accepted"].to_string());
        let role = match name.as_str() {
            BUILDER => "  (the adapter's builder)",
            COPIER => "  (uploaded copies and broken rows)",
            _ => "",
        };
        println!(
            "    {name:<8} {accepted:>8} {amount:>12} {:>6.1} %{role}",
            amount as f64 * 100.0 / total.max(1) as f64
        );
    }
    println!(
        "    {ADAPTER}: {} answers, fees {} (GET /v1/adapters/{ADAPTER}/contributors)",
        who["answers"], who["fees"]
    );
    Ok(())
}

fn show_attribution(answer: &(String, String, String, String), rec: &Value) {
    let (question, want, got, id) = answer;
    let c0 = &rec["choices"][0];
    println!("\n    Q: {question}  (expected {want})");
    println!("    A: {got}   [{id}]");
    let mut shares: Vec<(String, u64)> = c0["bits"]["shares"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect();
    shares.sort_by_key(|s| std::cmp::Reverse(s.1));
    let units = rec["params"]["shares"]["units"]
        .as_u64()
        .unwrap_or(1)
        .max(1);
    let line: Vec<String> = shares
        .iter()
        .map(|(who, u)| format!("{who} {:.0} %", *u as f64 * 100.0 / units as f64))
        .collect();
    println!("       whose data: {}", line.join(", "));
    let fee = &c0["bits"]["fee"];
    println!(
        "       fee {} = builder {} + contributors {}; reward log entry {}",
        fee["total"],
        fee["builder"],
        fee["contributors"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum::<u64>()),
        rec["reward"]["seq"]
    );
    if let Some(e) = c0["evidence"].as_array().and_then(|e| e.first()) {
        println!("       verbatim in training data: {}", e["text"]);
    }
}

fn summary(run: &Loop) -> anyhow::Result<()> {
    println!("\nheld-out questions, base model vs. with the adapter:");
    let per_skill = (run.before.answers.len() / CONTRIBUTORS.len()).max(1);
    for ((q, want, base, _), (_, _, tuned, _)) in run
        .before
        .answers
        .iter()
        .zip(&run.after.answers)
        .step_by(per_skill)
    {
        println!("Q: {q}   (expected: {want})");
        println!(
            "  base   : {}  [cut at {MAX_ANSWER_TOKENS} tokens]",
            one_line(base)
        );
        println!("  adapter: {}", one_line(tuned));
    }
    let seconds = run.started.elapsed().as_secs_f64();
    println!(
        "\nexact match on {} held-out questions: base {:.0} % -> with the adapter {:.0} %; {} answers attributed and paid; reward log verified: {}  ({seconds:.0} s in all)",
        run.after.total,
        run.before.rate() * 100.0,
        run.after.rate() * 100.0,
        run.attributions.len(),
        run.rewards["ok"] == true
    );
    println!(
        "dashboard: {}/ (admin key in {})",
        run.server.url,
        run.args.out.join("platform/admin.key").display()
    );
    let record = json!({
        "base_model": run.base.dir, "base_name": run.base.name,
        "contributors": CONTRIBUTORS.iter().map(|c| c.name).collect::<Vec<_>>(),
        "copier": COPIER, "builder": BUILDER,
        "uploads": run.uploads,
        "train_examples": run.train.len(), "held_out": run.held_out.len(),
        "exact_match_before": run.before, "exact_match_after": run.after,
        "job": run.job,
        "attributions": run.attributions.len(),
        "fees": run.attributions.iter().map(|r| {
            r["choices"].as_array().into_iter().flatten()
                .filter_map(|c| c["bits"]["fee"]["total"].as_u64()).sum::<u64>()
        }).sum::<u64>(),
        "rewards": {"ok": run.rewards["ok"], "entries": run.rewards["entries"], "balances": run.rewards["balances"]},
        "dashboard": format!("{}/", run.server.url),
        "seconds": seconds,
    });
    let path = run.args.out.join("demo.json");
    let text = serde_json::to_string_pretty(&record)?;
    std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

fn one_line(s: &str) -> String {
    let s = s.replace('\n', " ⏎ ");
    if s.chars().count() > 100 {
        format!("{}…", s.chars().take(100).collect::<String>())
    } else {
        s
    }
}
