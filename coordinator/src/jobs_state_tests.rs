use super::*;
use crate::progress::Progress;
use tributary_protocol::Digest;

fn spec(steps: u64) -> JobSpec {
    JobSpec::from_toml_str(&format!(
        "base_model = \"m\"\ndata = \"d\"\n[train]\nsteps = {steps}\n"
    ))
    .unwrap()
}

fn node(n: &str) -> NodeId {
    NodeId::new(n).unwrap()
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        backoff_ms: 1000,
        max_backoff_ms: 1500,
    }
}

#[test]
fn submissions_get_increasing_seqs_and_distinct_ids_even_in_the_same_millisecond() {
    let mut jobs = Jobs::new(policy());
    let a = jobs.submit(spec(1), 5).unwrap();
    let b = jobs.submit(spec(1), 5).unwrap();
    let c = jobs.submit(spec(1), 4).unwrap();
    assert_eq!(a.seq, 5000);
    assert!(a.seq < b.seq && b.seq < c.seq);
    assert_ne!(a.id, b.id);
    assert_eq!(a.state, JobState::Queued);
    assert_eq!(a.log[0].at_ms, 5);
    // The same scheme as a cluster submission with that seq.
    assert_eq!(new_job(spec(1), a.seq, 5).unwrap().id, a.id);
}

#[test]
fn an_invalid_spec_is_refused_naming_the_field() {
    let mut jobs = Jobs::new(policy());
    let mut s = spec(1);
    s.train.batch_size = 0;
    let err = jobs.submit(s, 0).unwrap_err();
    assert!(err.to_string().contains("train.batch_size"), "{err}");
    assert_eq!(jobs.all().count(), 0);
}

#[test]
fn cancel_queued_is_immediate_running_asks_the_driver_terminal_is_refused() {
    let mut jobs = Jobs::new(policy());
    let a = jobs.submit(spec(1), 0).unwrap().id;
    let b = jobs.submit(spec(1), 0).unwrap().id;
    match jobs.cancel(&a, 1).unwrap() {
        Effect::Persist(r) => assert_eq!(r.state, JobState::Cancelled),
        e => panic!("{e:?}"),
    }
    jobs.start(&b, vec![node("w1")], 2).unwrap();
    assert_eq!(jobs.cancel(&b, 3).unwrap(), Effect::StopRun(b.clone()));
    assert!(jobs.get(&b).unwrap().cancel_requested);
    assert!(matches!(
        jobs.cancel(&a, 4),
        Err(CoordError::BadState { .. })
    ));
    assert!(matches!(
        jobs.cancel(&JobId::new("job-none").unwrap(), 4),
        Err(CoordError::NoSuchJob(_))
    ));
}

#[test]
fn a_failing_job_is_retried_with_backoff_then_fails_with_its_reason() {
    let mut jobs = Jobs::new(policy());
    let id = jobs.submit(spec(1), 0).unwrap().id;
    let mut now = 10;
    for attempt in 1..=3u32 {
        assert_eq!(jobs.placeable(now).len(), 1, "attempt {attempt}");
        jobs.start(&id, vec![node("w1")], now).unwrap();
        let out = if attempt == 2 {
            JobOutcome::Requeue("every worker was lost".into())
        } else {
            JobOutcome::Failed("w1: executor setup failed: boom".into())
        };
        let recs = jobs
            .on_event(
                JobEvent::Done {
                    job: id.clone(),
                    outcome: out,
                },
                now,
            )
            .unwrap();
        let rec = &recs[0];
        assert_eq!(rec.attempts, attempt);
        if attempt < 3 {
            assert_eq!(rec.state, JobState::Queued);
            let wait = if attempt == 1 { 1000 } else { 1500 };
            assert_eq!(rec.not_before_ms, Some(now + wait));
            assert!(jobs.placeable(now + wait - 1).is_empty(), "backing off");
            now += wait;
        } else {
            assert_eq!(rec.state, JobState::Failed);
            let err = rec.error.as_deref().unwrap();
            assert!(err.contains("boom") && err.contains("3 attempts"), "{err}");
            assert!(jobs.placeable(u64::MAX).is_empty());
        }
    }
}

#[test]
fn a_backing_off_job_does_not_hold_back_the_jobs_behind_it() {
    let mut jobs = Jobs::new(policy());
    let poison = jobs.submit(spec(1), 0).unwrap().id;
    let good = jobs.submit(spec(2), 0).unwrap().id;
    assert_eq!(jobs.placeable(0)[0].id, poison);
    jobs.start(&poison, vec![node("w1")], 0).unwrap();
    jobs.on_event(
        JobEvent::Done {
            job: poison.clone(),
            outcome: JobOutcome::Requeue("worker actor gone".into()),
        },
        0,
    )
    .unwrap();
    let q: Vec<&JobId> = jobs.placeable(1).iter().map(|r| &r.id).collect();
    assert_eq!(q, vec![&good]);
}

#[test]
fn success_progress_and_fencing() {
    let mut jobs = Jobs::new(RetryPolicy::default());
    let id = jobs.submit(spec(4), 0).unwrap().id;
    let rec = jobs.start(&id, vec![node("w1"), node("w2")], 1).unwrap();
    assert_eq!(rec.progress.total_steps, 4);
    assert_eq!(rec.log.last().unwrap().msg, "placed on workers w1, w2");
    let progress = |step| JobEvent::Progress {
        job: id.clone(),
        progress: Progress {
            step,
            total_steps: 4,
            loss: Some(0.5),
            ..Progress::default()
        },
        workers: vec![node("w1")],
    };
    assert_eq!(jobs.on_event(progress(1), 100).unwrap().len(), 1);
    assert!(
        jobs.on_event(progress(2), 150).unwrap().is_empty(),
        "throttled"
    );
    assert_eq!(jobs.on_event(progress(3), 300).unwrap().len(), 1);
    assert_eq!(jobs.get(&id).unwrap().progress.step, 3);
    let recs = jobs
        .on_event(
            JobEvent::Done {
                job: id.clone(),
                outcome: JobOutcome::Succeeded {
                    adapter_digest: Digest::of(b"a"),
                    adapter: "file:///a".into(),
                    steps: 4,
                    final_loss: Some(0.25),
                },
            },
            400,
        )
        .unwrap();
    assert_eq!(recs[0].state, JobState::Succeeded);
    assert_eq!(recs[0].log.last().unwrap().msg, "succeeded");
    let err = jobs
        .on_event(
            JobEvent::Done {
                job: id,
                outcome: JobOutcome::Fenced {
                    token: 1,
                    highest: 2,
                },
            },
            500,
        )
        .unwrap_err();
    assert!(matches!(err, CoordError::Fenced { .. }));
}

#[test]
fn adopted_running_jobs_are_queued_again_and_known_ones_kept() {
    let mut jobs = Jobs::new(RetryPolicy::default());
    let mut a = new_job(spec(1), 7, 0).unwrap();
    a.state = JobState::Running;
    a.workers = vec![node("w1")];
    let b = new_job(spec(2), 9, 0).unwrap();
    let changed = jobs.adopt(vec![a.clone(), b.clone()], 50);
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].state, JobState::Queued);
    assert!(changed[0].workers.is_empty());
    assert!(jobs.adopt(vec![a], 60).is_empty(), "already known");
    // Later submissions queue after adopted ones.
    let c = jobs.submit(spec(3), 0).unwrap();
    assert!(c.seq > b.seq);
}
