use super::*;

fn rules(on_cycle: CycleAction) -> Arc<CascadeRules> {
    let config = CascadeConfig {
        on_cycle,
        max_depth: 3,
        ..CascadeConfig::default()
    };
    Arc::new(CascadeRules::new(&config, "bot", &Telemetry::new()).unwrap())
}

fn listener(role: Role, table: &Arc<Correlations>, on_cycle: CycleAction) -> ListenerCascade {
    ListenerCascade::new(
        role,
        Some(table.clone()),
        HeaderName::from_static("x-agent-task-id"),
        Some(rules(on_cycle)),
        Counter::noop(),
    )
    .unwrap()
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, v.parse().unwrap());
    }
    h
}

#[test]
fn deadline_depth_and_path_headers_are_read_and_bad_ones_ignored() {
    let r = rules(CycleAction::Record);
    let now = Instant::now();
    let d = |v: &str| {
        r.deadline(
            &headers(&[("x-agent-deadline-ms", v)]),
            now,
            r.default_deadline,
        )
    };
    assert_eq!(d("1500"), Ok(Some(now + Duration::from_millis(1500))));
    assert_eq!(d(" 20 "), Ok(Some(now + Duration::from_millis(20))));
    assert_eq!(d("0"), Err(()), "no time left");
    assert_eq!(d("-5"), Err(()));
    let default = Ok(Some(now + Duration::from_secs(120)));
    assert_eq!(d("soon"), default, "malformed: the default");
    assert_eq!(d("1e3"), default);
    assert_eq!(
        r.deadline(&HeaderMap::new(), now, r.default_deadline),
        default
    );
    assert_eq!(
        r.deadline(&HeaderMap::new(), now, None),
        Ok(None),
        "no default: none"
    );
    assert_eq!(d("99999999999999"), Ok(Some(now + MAX_DEADLINE)), "capped");
    let depth = |v: &str| r.depth(&headers(&[("x-agent-call-depth", v)]));
    assert_eq!(depth("2"), 2);
    assert_eq!(depth("-1"), 0);
    assert_eq!(depth("two"), 0);
    let path = |v: &str| r.path(&headers(&[("x-agent-call-path", v)]));
    assert!(path("a,b").is_some());
    assert!(path(&"a,".repeat(MAX_CALL_PATH)).is_none(), "past the cap");
    assert!(r.holds_me(&HeaderValue::from_static("planner, bot ,x")));
    assert!(!r.holds_me(&HeaderValue::from_static("planner,bot2,robot")));
}

#[test]
fn a_path_carried_on_gets_this_agent_and_loses_its_oldest_names_past_the_cap() {
    let r = rules(CycleAction::Record);
    assert_eq!(r.path_on(None), "bot");
    assert_eq!(r.path_on(Some(&HeaderValue::from_static("a,b"))), "a,b,bot");
    let long = "name-of-an-agent,".repeat(MAX_CALL_PATH / 17) + "last";
    let on = r.path_on(Some(&HeaderValue::from_str(&long).unwrap()));
    assert!(on.len() <= MAX_CALL_PATH, "{}", on.len());
    assert!(on.to_str().unwrap().ends_with(",last,bot"));
    assert!(on.to_str().unwrap().starts_with("name-of-an-agent,"));
}

#[test]
fn inbound_requests_past_the_depth_or_in_a_cycle_are_refused_before_entering() {
    let table = Arc::new(Correlations::new(Counter::noop()));
    let block = listener(Role::Agent, &table, CycleAction::Block);
    let now = Instant::now();
    let deep = headers(&[("x-agent-call-depth", "4"), ("x-agent-task-id", "t")]);
    let err = CascadeState::default().begin(Some(&block), &deep, None, now);
    assert!(matches!(
        err,
        Err(ProxyError::CallDepthExceeded { depth: 4, max: 3 })
    ));
    let cycle = headers(&[("x-agent-call-path", "a,bot"), ("x-agent-task-id", "t")]);
    let err = CascadeState::default().begin(Some(&block), &cycle, None, now);
    assert!(matches!(err, Err(ProxyError::CallCycle { .. })));
    let spent = headers(&[("x-agent-deadline-ms", "0"), ("x-agent-task-id", "t")]);
    let err = CascadeState::default().begin(Some(&block), &spent, None, now);
    assert!(matches!(
        err,
        Err(ProxyError::DeadlineExceeded(DeadlineWhen::Arrival))
    ));
    assert!(table.is_empty(), "nothing refused was entered");
    // Under record, the cycle passes.
    let record = listener(Role::Agent, &table, CycleAction::Record);
    let mut passed = CascadeState::default();
    passed.begin(Some(&record), &cycle, None, now).unwrap();
    assert_eq!(table.len(), 1);
    passed.end(Some(&record), StatusClass::Success, Cause::None);
    assert!(table.is_empty());
}

#[test]
fn a_peer_call_carries_the_time_left_its_depth_and_path_and_a_failure_goes_to_its_inbound() {
    let table = Arc::new(Correlations::new(Counter::noop()));
    let inbound_l = listener(Role::Agent, &table, CycleAction::Block);
    let peer_l = listener(Role::Peer, &table, CycleAction::Block);
    let now = Instant::now();
    let arriving = headers(&[
        ("x-agent-task-id", "t-1"),
        ("x-agent-deadline-ms", "5000"),
        ("x-agent-call-depth", "1"),
        ("x-agent-call-path", "front"),
    ]);
    let mut inbound = CascadeState::default();
    inbound
        .begin(Some(&inbound_l), &arriving, None, now)
        .unwrap();

    let mut peer = CascadeState::default();
    let call = headers(&[("x-agent-task-id", "t-1")]);
    let later = now + Duration::from_millis(1200);
    peer.begin(Some(&peer_l), &call, None, later).unwrap();
    assert_eq!(peer.deadline(), Some(now + Duration::from_millis(5000)));
    let mut out = HeaderMap::new();
    peer.sending(Some(&peer_l), &mut out, later).unwrap();
    assert_eq!(out["x-agent-deadline-ms"], "3800");
    assert_eq!(out["x-agent-call-depth"], "2");
    assert_eq!(out["x-agent-call-path"], "front,bot");
    // The call failed after every fallback: the agent's 5xx is the dependency's.
    let cause = peer.end(Some(&peer_l), StatusClass::ServerError, Cause::Upstream);
    assert_eq!(cause, Cause::Upstream);
    let cause = inbound.end(Some(&inbound_l), StatusClass::ServerError, Cause::Agent);
    assert_eq!(cause, Cause::Dependency);
    assert!(table.is_empty());
}

#[test]
fn an_egress_call_after_its_inbound_deadline_is_refused_and_an_agent_failure_stays_its_own() {
    let table = Arc::new(Correlations::new(Counter::noop()));
    let inbound_l = listener(Role::Agent, &table, CycleAction::Block);
    let llm_l = listener(Role::Llm, &table, CycleAction::Block);
    let now = Instant::now();
    let arriving = headers(&[("x-agent-task-id", "t-2"), ("x-agent-deadline-ms", "100")]);
    let mut inbound = CascadeState::default();
    inbound
        .begin(Some(&inbound_l), &arriving, None, now)
        .unwrap();
    let call = headers(&[("x-agent-task-id", "t-2")]);
    let late = now + Duration::from_millis(100);
    let err = CascadeState::default().begin(Some(&llm_l), &call, None, late);
    assert!(matches!(
        err,
        Err(ProxyError::DeadlineExceeded(DeadlineWhen::Call))
    ));
    // A successful call notes nothing; the agent's own 5xx stays the agent's.
    let mut ok = CascadeState::default();
    ok.begin(Some(&llm_l), &call, None, now).unwrap();
    let mut out = HeaderMap::new();
    ok.sending(Some(&llm_l), &mut out, now).unwrap();
    assert!(out.is_empty(), "only peer calls carry the headers");
    ok.end(Some(&llm_l), StatusClass::Success, Cause::None);
    let cause = inbound.end(Some(&inbound_l), StatusClass::ServerError, Cause::Agent);
    assert_eq!(cause, Cause::Agent);
}

#[test]
fn time_spent_by_failed_attempts_is_the_upstreams_not_the_agents() {
    let table = Arc::new(Correlations::new(Counter::noop()));
    let inbound_l = listener(Role::Agent, &table, CycleAction::Block);
    let peer_l = listener(Role::Peer, &table, CycleAction::Block);
    let now = Instant::now();
    let arriving = headers(&[("x-agent-task-id", "t-3"), ("x-agent-deadline-ms", "100")]);
    let mut inbound = CascadeState::default();
    inbound
        .begin(Some(&inbound_l), &arriving, None, now)
        .unwrap();
    let mut call = CascadeState::default();
    let task = headers(&[("x-agent-task-id", "t-3")]);
    call.begin(Some(&peer_l), &task, None, now).unwrap();
    call.sending(Some(&peer_l), &mut HeaderMap::new(), now)
        .unwrap();
    // The first attempt failed at the deadline; the fallback's turn comes too late.
    let late = now + Duration::from_millis(100);
    let err = call.sending(Some(&peer_l), &mut HeaderMap::new(), late);
    assert!(matches!(
        err,
        Err(ProxyError::DeadlineExceeded(DeadlineWhen::Fallback))
    ));
    let err = ProxyError::DeadlineExceeded(DeadlineWhen::Fallback);
    assert_eq!(err.cause(Role::Peer), Cause::Upstream);
    assert_eq!(err.outcome(), None, "the fallback was not contacted");
}

#[test]
fn an_uncorrelated_peer_call_starts_a_path_or_carries_on_the_one_the_agent_passed() {
    let table = Arc::new(Correlations::new(Counter::noop()));
    let peer_l = listener(Role::Peer, &table, CycleAction::Block);
    let now = Instant::now();
    let mut fresh = CascadeState::default();
    fresh
        .begin(Some(&peer_l), &HeaderMap::new(), None, now)
        .unwrap();
    let mut out = HeaderMap::new();
    fresh.sending(Some(&peer_l), &mut out, now).unwrap();
    assert_eq!(out["x-agent-call-depth"], "1");
    assert_eq!(out["x-agent-call-path"], "bot");
    assert!(!out.contains_key("x-agent-deadline-ms"));
    let passed = headers(&[
        ("x-agent-call-depth", "2"),
        ("x-agent-call-path", "a,b"),
        ("x-agent-deadline-ms", "900"),
    ]);
    let mut carried = CascadeState::default();
    carried.begin(Some(&peer_l), &passed, None, now).unwrap();
    let mut out = passed.clone();
    let later = now + Duration::from_millis(400);
    carried.sending(Some(&peer_l), &mut out, later).unwrap();
    assert_eq!(out["x-agent-call-depth"], "3");
    assert_eq!(out["x-agent-call-path"], "a,b,bot");
    assert_eq!(
        out["x-agent-deadline-ms"], "500",
        "the agent's own deadline, kept"
    );
}
