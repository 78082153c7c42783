//! The queue, its slicing and when a request goes, on paused time: a
//! request that must go is there without the clock moving; one that must
//! wait is still not there after the clock ran ahead.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use super::*;

/// A sent request: `(occurrence, seq, start, end)` of each part.
type Shape = Vec<(String, u64, usize, usize)>;

struct Fixture {
    share: Arc<Share>,
    sent: mpsc::UnboundedReceiver<(Vec<Part>, OwnedSemaphorePermit)>,
    shutdown: CancellationToken,
}

fn fixture(batch_size: usize, concurrency: usize) -> Fixture {
    let (sender, sent) = mpsc::unbounded_channel();
    let post: Post = Arc::new(move |parts, permit| {
        let _ = sender.send((parts, permit));
    });
    let shutdown = CancellationToken::new();
    let share = Share::new(
        batch_size,
        Arc::new(Semaphore::new(concurrency)),
        shutdown.clone(),
        "http://test/".into(),
        post,
    );
    Fixture {
        share,
        sent,
        shutdown,
    }
}

fn origin(fixture: &Fixture, name: &str) -> Arc<Origin> {
    fixture.share.join();
    Arc::new(Origin {
        import: "news".into(),
        occurrence: name.into(),
        cancel: fixture.shutdown.child_token(),
    })
}

/// Batch `seq` of `events` events, lines from `seq * 1000 + 2`.
fn batch(seq: u64, events: usize) -> Batch {
    let mut batch = Batch::new(seq);
    for i in 0..events as u64 {
        let line = seq * 1000 + 2 + i;
        batch.push_with(line, |buf| {
            buf.extend_from_slice(format!("{{\"line\":{line}}}").as_bytes())
        });
    }
    batch
}

fn shape(parts: &[Part]) -> Shape {
    parts
        .iter()
        .map(|part| {
            (
                part.slice.origin.occurrence.clone(),
                part.slice.batch.seq,
                part.start,
                part.end,
            )
        })
        .collect()
}

fn part(occurrence: &str, seq: u64, start: usize, end: usize) -> (String, u64, usize, usize) {
    (occurrence.to_string(), seq, start, end)
}

/// The next request, which must go without the clock moving.
async fn sent_now(fixture: &mut Fixture) -> (Vec<Part>, OwnedSemaphorePermit) {
    let start = Instant::now();
    let sent = timeout(Duration::from_secs(3600), fixture.sent.recv())
        .await
        .expect("a request goes")
        .expect("the post channel is open");
    assert_eq!(Instant::now(), start, "the request went only after a wait");
    sent
}

/// No request goes, however long the clock runs.
async fn nothing_sent(fixture: &mut Fixture) {
    let waited = timeout(Duration::from_secs(3600), fixture.sent.recv()).await;
    assert!(
        waited.is_err(),
        "a request went: {:?}",
        waited.map(|s| s.map(|(p, _)| shape(&p)))
    );
}

/// The API answers every part 2xx.
fn answer(parts: Vec<Part>) {
    for part in parts {
        part.slice.part_delivered(Vec::new());
    }
}

fn acked(answer: &mut oneshot::Receiver<SliceAnswer>) -> Option<Ack> {
    match answer.try_recv() {
        Ok(Ok(ack)) => Some(ack),
        Ok(Err(err)) => panic!("the slice failed: {err}"),
        Err(_) => None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_file_alone_goes_out_at_once() {
    let mut f = fixture(100, 4);
    let a = origin(&f, "a");
    f.share.start_producing();

    let mut ack = f.share.enqueue(&a, batch(0, 20), true);

    let (parts, _permit) = sent_now(&mut f).await;
    assert_eq!(shape(&parts), [part("a", 0, 0, 20)]);
    assert!(acked(&mut ack).is_none(), "acked before the API answered");
    answer(parts);
    assert_eq!(acked(&mut ack).map(|ack| ack.seq), Some(0));
}

#[tokio::test(start_paused = true)]
async fn a_trickle_of_single_files_each_goes_out_at_once() {
    let mut f = fixture(100, 4);
    for index in 0..10 {
        let name = format!("f{index}");
        let file = origin(&f, &name);
        f.share.start_producing();
        let mut ack = f.share.enqueue(&file, batch(0, 20), true);
        let (parts, permit) = sent_now(&mut f).await;
        assert_eq!(shape(&parts), [part(&name, 0, 0, 20)]);
        answer(parts);
        drop(permit);
        assert!(acked(&mut ack).is_some());
        // The delivery finishes; the submitter ends and starts again.
        f.share.leave(false);
    }
}

#[tokio::test(start_paused = true)]
async fn a_partial_request_waits_for_a_producing_delivery_and_takes_its_batch() {
    let mut f = fixture(100, 4);
    let a = origin(&f, "a");
    let b = origin(&f, "b");
    f.share.start_producing();

    let mut first = f.share.enqueue(&a, batch(0, 20), false);
    nothing_sent(&mut f).await;
    let mut second = f.share.enqueue(&b, batch(0, 30), true);

    let (parts, _permit) = sent_now(&mut f).await;
    assert_eq!(shape(&parts), [part("a", 0, 0, 20), part("b", 0, 0, 30)]);
    answer(parts);
    assert!(acked(&mut first).is_some() && acked(&mut second).is_some());
}

#[tokio::test(start_paused = true)]
async fn full_requests_go_while_others_produce_and_a_split_slice_waits_for_both_parts() {
    let mut f = fixture(100, 4);
    let a = origin(&f, "a");
    let _b = origin(&f, "b");
    f.share.start_producing(); // b

    let mut zero = f.share.enqueue(&a, batch(0, 60), false);
    nothing_sent(&mut f).await;
    let mut one = f.share.enqueue(&a, batch(1, 60), false);
    let (full, _slot) = sent_now(&mut f).await;
    assert_eq!(shape(&full), [part("a", 0, 0, 60), part("a", 1, 0, 40)]);
    nothing_sent(&mut f).await; // 20 events wait: b is producing
    f.share.stop_producing(); // b waits for acks now
    let (rest, _slot) = sent_now(&mut f).await;
    assert_eq!(shape(&rest), [part("a", 1, 40, 60)]);

    answer(rest);
    assert!(acked(&mut one).is_none(), "acked with a part unanswered");
    answer(full);
    assert_eq!(acked(&mut zero).map(|ack| ack.seq), Some(0));
    assert_eq!(acked(&mut one).map(|ack| ack.seq), Some(1));
}

#[tokio::test(start_paused = true)]
async fn while_every_slot_is_busy_the_next_request_fills_up() {
    let mut f = fixture(100, 1);
    let files: Vec<Arc<Origin>> = (0..6).map(|i| origin(&f, &format!("f{i}"))).collect();

    let _first = f.share.enqueue(&files[0], batch(0, 20), false);
    let (parts, slot) = sent_now(&mut f).await;
    assert_eq!(shape(&parts), [part("f0", 0, 0, 20)]);
    let _rest: Vec<_> = files[1..]
        .iter()
        .map(|file| f.share.enqueue(file, batch(0, 20), false))
        .collect();
    nothing_sent(&mut f).await; // the only slot is taken
    answer(parts);
    drop(slot);

    let (parts, _slot) = sent_now(&mut f).await;
    let names: Vec<String> = shape(&parts).into_iter().map(|p| p.0).collect();
    assert_eq!(
        names,
        ["f1", "f2", "f3", "f4", "f5"],
        "one request of 100 events"
    );
}

#[tokio::test(start_paused = true)]
async fn refusals_are_sorted_into_their_slices_ack() {
    let mut f = fixture(100, 4);
    let a = origin(&f, "a");
    let mut ack = f.share.enqueue(&a, batch(0, 10), false);
    let (parts, _slot) = sent_now(&mut f).await;
    let refusal = |line| Refusal {
        line,
        message: "refused".into(),
    };
    for part in parts {
        part.slice.part_delivered(vec![refusal(9), refusal(4)]);
    }
    let lines: Vec<u64> = acked(&mut ack)
        .expect("acked")
        .refused
        .iter()
        .map(|r| r.line)
        .collect();
    assert_eq!(lines, [4, 9]);
}

#[tokio::test(start_paused = true)]
async fn a_stopped_delivery_holds_nothing_back_and_its_slices_are_not_sent() {
    let mut f = fixture(100, 4);
    let a = origin(&f, "a");
    let b = origin(&f, "b");
    let c = origin(&f, "c");
    f.share.start_producing(); // c
    let mut of_b = f.share.enqueue(&b, batch(0, 20), false);
    let mut of_a = f.share.enqueue(&a, batch(0, 20), false);
    nothing_sent(&mut f).await;

    b.cancel.cancel();
    f.share.leave(false);
    c.cancel.cancel();
    f.share.leave(true);

    let (parts, _slot) = sent_now(&mut f).await;
    assert_eq!(shape(&parts), [part("a", 0, 0, 20)]);
    assert!(matches!(of_b.try_recv(), Ok(Err(SinkError::Interrupted))));
    answer(parts);
    assert!(acked(&mut of_a).is_some());
}

#[tokio::test(start_paused = true)]
async fn shutdown_answers_what_waits_and_what_comes_after() {
    let mut f = fixture(100, 4);
    let a = origin(&f, "a");
    let _b = origin(&f, "b");
    f.share.start_producing(); // b
    let mut waiting = f.share.enqueue(&a, batch(0, 20), false);
    nothing_sent(&mut f).await;

    f.shutdown.cancel();

    assert!(matches!(
        timeout(Duration::from_secs(1), &mut waiting).await,
        Ok(Ok(Err(SinkError::Interrupted)))
    ));
    let mut late = f.share.enqueue(&a, batch(1, 20), false);
    assert!(matches!(late.try_recv(), Ok(Err(SinkError::Interrupted))));
    nothing_sent(&mut f).await;
}
