use super::*;

/// A backend that records what the driver asked of it.
#[derive(Default)]
struct Recorder {
    calls: Vec<String>,
}

impl Backend for Recorder {
    type Error = String;
    fn step(&mut self, step: u64, micro: &[MicroRange]) -> Result<StepOutput, String> {
        self.calls.push(format!("step {step} x{}", micro.len()));
        Ok(StepOutput {
            loss: 1.0 / (step as f32 + 1.0),
            tokens: 10,
            input_tokens: 12,
            ..StepOutput::default()
        })
    }
    fn eval(&mut self) -> Result<Option<f32>, String> {
        self.calls.push("eval".into());
        Ok(Some(self.calls.len() as f32))
    }
    fn checkpoint(&mut self, done: u64) -> Result<(), String> {
        self.calls.push(format!("checkpoint {done}"));
        Ok(())
    }
}

struct CountSteps(u64);
impl Observer<Recorder> for CountSteps {
    fn after_step(&mut self, b: &mut Recorder, ev: &StepEvent<'_>) -> Result<(), String> {
        self.0 += 1;
        b.calls.push(format!("observed {}", ev.progress.step));
        Ok(())
    }
}

fn plan(steps: u64, every: Option<u64>, eval: bool) -> RunPlan {
    let mut p = RunPlan::new(10, 2, 3, Steps::Fixed(steps)).unwrap();
    p.checkpoint_every = every;
    p.eval = eval;
    p
}

#[test]
fn the_loop_evaluates_steps_checkpoints_and_finishes_in_order() {
    let mut d = Driver::new(plan(5, Some(2), true), 0);
    let mut b = Recorder::default();
    let mut obs = CountSteps(0);
    let t = std::cell::Cell::new(0.0);
    let clock = || {
        t.set(t.get() + 0.5);
        t.get()
    };
    let s = run(&mut d, &mut b, &mut obs, &clock).unwrap();
    assert_eq!(
        b.calls,
        [
            "eval",
            "step 0 x3",
            "observed 1",
            "step 1 x3",
            "observed 2",
            "checkpoint 2",
            "step 2 x3",
            "observed 3",
            "step 3 x3",
            "observed 4",
            "checkpoint 4",
            "step 4 x3",
            "observed 5",
            "eval"
        ]
    );
    assert_eq!(obs.0, 5);
    assert_eq!(s.steps, 5);
    assert_eq!(s.tokens, 50);
    assert_eq!(s.eval_before, Some(1.0));
    assert_eq!(s.eval_after, Some(14.0));
    assert_eq!(s.final_loss, Some(0.2));
    assert!((s.seconds - 2.5).abs() < 1e-9, "{}", s.seconds);
}

#[test]
fn a_resumed_run_starts_at_its_step_and_its_progress_counts_from_there() {
    let mut d = Driver::new(plan(4, None, false), 3);
    assert_eq!(
        d.next_action(),
        Action::Step {
            step: 3,
            micro: d.plan().micro_batches(3)
        }
    );
    let p = d.step_done(
        &StepOutput {
            loss: 0.5,
            tokens: 8,
            ..StepOutput::default()
        },
        2.0,
    );
    assert_eq!((p.step, p.total_steps, p.tokens), (4, 4, 8));
    assert_eq!(p.tokens_per_sec, 4.0);
    assert_eq!(d.next_action(), Action::Finish);
    assert_eq!(d.next_action(), Action::Finish);
}

#[test]
fn a_failing_step_stops_the_run_with_its_error() {
    struct Fails;
    impl Backend for Fails {
        type Error = String;
        fn step(&mut self, step: u64, _: &[MicroRange]) -> Result<StepOutput, String> {
            Err(format!("boom at {step}"))
        }
        fn eval(&mut self) -> Result<Option<f32>, String> {
            Ok(None)
        }
        fn checkpoint(&mut self, _: u64) -> Result<(), String> {
            Ok(())
        }
    }
    let mut d = Driver::new(plan(3, None, false), 0);
    let err = run(&mut d, &mut Fails, &mut (), &|| 0.0).unwrap_err();
    assert_eq!(err, "boom at 0");
}
