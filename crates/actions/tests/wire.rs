//! `Action`/`Observation` JSON against fixtures written from OpenHands' documented shapes
//! (events/serialization): what an OpenHands event stream carries parses, and what we write
//! has the same shape.

use sandkit_actions::{Action, ActionEvent, Observation};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn event(name: &str) -> ActionEvent {
    serde_json::from_value(fixture(name)).unwrap()
}

/// Every field we write is in the fixture with the same value.
fn assert_subset(ours: &Value, theirs: &Value, at: &str) {
    match ours {
        Value::Object(map) => {
            for (k, v) in map {
                let t = theirs
                    .get(k)
                    .unwrap_or_else(|| panic!("{at}.{k} is not in the OpenHands shape"));
                assert_subset(v, t, &format!("{at}.{k}"));
            }
        }
        other => assert_eq!(other, theirs, "{at}"),
    }
}

#[test]
fn run_action_parses_and_round_trips() {
    let e = event("run_action.json");
    assert_eq!(e.timeout, Some(120.0));
    let Action::Run(ref r) = e.action else {
        panic!("{e:?}")
    };
    assert_eq!(r.command, "ls -la");
    assert!(!r.is_input && !r.is_static && r.cwd.is_none());
    assert_subset(
        &serde_json::to_value(&e).unwrap(),
        &fixture("run_action.json"),
        "",
    );
}

#[test]
fn ipython_read_write_edit_browse_actions_parse() {
    let Action::RunIpython(i) = event("run_ipython_action.json").action else {
        panic!()
    };
    assert_eq!((i.code.as_str(), i.include_extra), ("print(1)", true));
    let Action::Read(r) = event("read_action.json").action else {
        panic!()
    };
    assert_eq!(
        (r.impl_source.as_str(), r.view_range),
        ("oh_aci", Some(vec![1, 20]))
    );
    let Action::Write(w) = event("write_action.json").action else {
        panic!()
    };
    assert_eq!(
        (w.path.as_str(), w.content.as_str(), w.start, w.end),
        ("/workspace/b.txt", "hello\n", 0, -1)
    );
    let Action::Edit(ed) = event("edit_action.json").action else {
        panic!()
    };
    assert_eq!(
        (
            ed.command.as_str(),
            ed.old_str.as_deref(),
            ed.new_str.as_deref()
        ),
        ("str_replace", Some("x = 1"), Some("x = 2"))
    );
    let Action::Browse(b) = event("browse_action.json").action else {
        panic!()
    };
    assert_eq!(b.url, "http://localhost:8000");
    for name in [
        "run_ipython_action.json",
        "read_action.json",
        "write_action.json",
        "edit_action.json",
        "browse_action.json",
    ] {
        let ours = serde_json::to_value(event(name)).unwrap();
        assert_subset(&ours, &fixture(name), name);
    }
}

#[test]
fn observations_parse_and_round_trip() {
    let obs: Observation = serde_json::from_value(fixture("run_observation.json")).unwrap();
    assert_eq!(obs.observation, "run");
    assert_eq!(obs.exit_code(), Some(0));
    assert_eq!(obs.content, "total 0\n");
    assert_eq!(
        obs.to_agent_text(),
        "total 0\n\n[The command completed with exit code 0.]\n[Current working directory: /workspace]"
    );
    assert_subset(
        &serde_json::to_value(&obs).unwrap(),
        &fixture("run_observation.json"),
        "",
    );
    let err: Observation = serde_json::from_value(fixture("error_observation.json")).unwrap();
    assert!(!err.success);
    assert_subset(
        &serde_json::to_value(Observation::error("File not found: /nope.")).unwrap(),
        &fixture("error_observation.json"),
        "",
    );
}

#[test]
fn unknown_actions_are_refused_not_guessed() {
    let e = serde_json::from_str::<Action>(r#"{"action":"teleport","args":{}}"#).unwrap_err();
    assert!(e.to_string().contains("teleport"), "{e}");
}
