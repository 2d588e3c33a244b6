//! Unit tests of the pool's waiter choice and affinity keys (`pool.rs`).

use super::*;

fn waiter(affinity: u64) -> (Waiter, oneshot::Receiver<Grant>) {
    let (tx, rx) = oneshot::channel();
    let w = Waiter {
        tx,
        deadline: None,
        affinity: Affinity(affinity),
        passed: 0,
        first_passed: None,
    };
    (w, rx)
}

fn queue(affinities: &[u64]) -> VecDeque<Waiter> {
    affinities.iter().map(|&a| waiter(a).0).collect()
}

fn served(waiters: &mut VecDeque<Waiter>, affinity: u64) -> Option<u64> {
    take_waiter(waiters, Affinity(affinity)).map(|w| w.affinity.0)
}

#[test]
fn a_server_goes_to_the_first_waiter_that_wants_its_settings() {
    let mut q = queue(&[1, 2, 3, 2]);
    assert_eq!(served(&mut q, 2), Some(2));
    assert_eq!(q.iter().map(|w| w.passed).collect::<Vec<_>>(), [1, 0, 0]);
    assert_eq!(served(&mut q, 9), Some(1), "no taker: the head");
    assert_eq!(served(&mut q, 0), Some(3), "no preference: the head");
    assert_eq!(served(&mut q, 2), Some(2));
    assert_eq!(served(&mut q, 2), None);
}

#[test]
fn no_waiter_is_passed_over_more_than_max_passes_times() {
    // The head wants settings no released server has; everyone behind it wants them.
    let mut q = queue(&[1]);
    for _ in 0..10 {
        q.push_back(waiter(2).0);
    }
    let mut order = Vec::new();
    while let Some(a) = served(&mut q, 2) {
        order.push(a);
        q.push_back(waiter(2).0);
        if a == 1 {
            break;
        }
    }
    assert_eq!(order.len(), usize::from(MAX_PASSES) + 1, "{order:?}");
    assert!(q.iter().all(|w| w.passed <= MAX_PASSES));
}

#[test]
fn a_waiter_first_passed_over_long_ago_is_served() {
    let mut q = queue(&[1, 2]);
    q[0].passed = 1;
    q[0].first_passed = Some(Instant::now() - MAX_PASS_DELAY);
    assert_eq!(served(&mut q, 2), Some(1));
    let mut q = queue(&[1, 2]);
    q[0].passed = 1;
    q[0].first_passed = Some(Instant::now());
    assert_eq!(served(&mut q, 2), Some(2));
    assert!(q[0].first_passed.is_some() && q[0].passed == 2);
}

#[test]
fn waiters_beyond_the_window_are_not_looked_at() {
    let mut q = queue(&vec![1; AFFINITY_WINDOW]);
    q.push_back(waiter(2).0);
    assert_eq!(served(&mut q, 2), Some(1));
    assert!(q.iter().all(|w| w.passed == 0));
}

#[test]
fn affinity_keys_ignore_order_and_tell_tenants_apart() {
    let s = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let a = s(&[("app.current_tenant", "acme"), ("TimeZone", "UTC")]);
    let b = s(&[("TimeZone", "UTC"), ("app.current_tenant", "acme")]);
    let g = s(&[("app.current_tenant", "globex"), ("TimeZone", "UTC")]);
    assert_eq!(Affinity::of(&a), Affinity::of(&b));
    assert_ne!(Affinity::of(&a), Affinity::of(&g));
    assert_ne!(Affinity::of(&[]), Affinity::NONE);
}

/// A pool of one server that is never reached (its checkouts only queue here).
fn pool_of_one() -> Arc<Pool> {
    let target = ServerTarget {
        host: "127.0.0.1".into(),
        port: 1,
        unix_socket: None,
        dbname: "app".into(),
        user: "app".into(),
        password: None,
        tls_mode: tenantgate_config::ServerTlsMode::Disable,
        tls: None,
        connect_timeout: Duration::from_secs(1),
        max_message: 1 << 20,
        max_prepared: 16,
    };
    Pool::new(
        "app",
        PoolSettings {
            target,
            mode: PoolMode::Transaction,
            pool_size: 1,
            min_pool_size: 0,
            idle_timeout: Duration::ZERO,
            lifetime: Duration::ZERO,
            query_wait_timeout: Duration::ZERO,
        },
    )
}

#[tokio::test]
async fn an_abandoned_checkout_gives_back_what_it_was_granted() {
    let pool = pool_of_one();
    // The one server is out: a checkout queues.
    pool.lock().total = 1;
    let queued = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire(Affinity::NONE).await.is_ok() }
    });
    tokio::task::yield_now().await;
    assert_eq!(pool.counts().waiting, 1);
    // That server is closed: the waiter may open one, but its checkout is dropped (the
    // client left) before it takes the grant.
    pool.forget_one();
    assert_eq!((pool.counts().total, pool.counts().waiting), (1, 0));
    queued.abort();
    assert!(queued.await.is_err_and(|e| e.is_cancelled()));
    assert_eq!(pool.counts().total, 0, "the grant was handed back");
}

/// A server dropped without going through a release path (a session unwinding from a panic)
/// gives its place in the pool back; one that was released keeps it accounted for there.
#[test]
fn a_server_place_dropped_without_a_release_is_given_back() {
    let pool = pool_of_one();
    pool.lock().total = 1;
    Place::new(&pool).keep();
    assert_eq!(pool.counts().total, 1);
    drop(Place::new(&pool));
    assert_eq!(pool.counts().total, 0, "the place was given back");
}
