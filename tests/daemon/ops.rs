//! The operator commands of the real binary against a real daemon (also the real binary,
//! with file keys): status, rotate, rewrap, import, drop-key, check-config, and their exit
//! codes (0 done, 1 refused, 64 usage or bad config, 69 no daemon). Each step of the
//! README's "Operator's runbook" is run here (or in lifecycle.rs / regions.rs).

use std::time::Duration;

use crate::common::make_state_dir;

mod exits;
mod reload;
mod site;

use site::{allow_me, get, previous_ids, status_json, store, Site, EVERYTHING};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_rotate_and_drop_key() {
    let site = Site::new();
    site.configure("a", &allow_me(EVERYTHING));
    let _daemon = site.start();
    let mut c = site.client().await;
    let first = hex::encode(&get(&mut c, true).await.unwrap().active.unwrap().key_id);

    let table = site.cli(&["status"]);
    assert_eq!(table.code, 0, "{table:?}");
    for want in ["KEY / URI", "STORE", "s1", &first, "ACTIVE", "file://"] {
        assert!(table.stdout.contains(want), "{want:?} in\n{}", table.stdout);
    }

    let doc = status_json(&site);
    let keys = doc["keys"].as_array().unwrap();
    let names: Vec<&str> = keys.iter().map(|k| k["key"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(keys[0]["state"], "ACTIVE", "{doc}");
    assert_eq!(keys[0]["uris"][0]["state"], "ACTIVE", "{doc}");
    assert!(keys[0]["uris"][0]["uri"]
        .as_str()
        .unwrap()
        .starts_with("file://"));
    assert!(keys[0]["checked_at"].is_string(), "{doc}");
    let s = store(&doc);
    assert_eq!(s["store"], "s1");
    assert_eq!(s["key"], "a");
    assert_eq!(s["configured_key"], "a");
    assert_eq!(s["needs_rewrap"], false);
    assert_eq!(s["active"]["key_id"], first.as_str());
    assert_eq!(s["active"]["algorithm"], "AES-256");
    assert_eq!(s["previous_count"], 0);

    // Rotate twice: each prints the new active id and the previous ones, newest first.
    let r1 = site.cli(&["rotate", "s1"]);
    assert_eq!(r1.code, 0, "{r1:?}");
    let second = store(&status_json(&site))["active"]["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(second, first);
    let r2 = site.cli(&["rotate", "s1"]);
    assert_eq!(r2.code, 0, "{r2:?}");
    let doc = status_json(&site);
    let third = store(&doc)["active"]["key_id"].as_str().unwrap().to_owned();
    assert_eq!(previous_ids(store(&doc)), [second.clone(), first.clone()]);
    assert_eq!(store(&doc)["previous_count"], 2);
    let printed = format!("active key {third}");
    assert!(r2.stdout.contains(&printed), "{}", r2.stdout);
    assert!(
        r2.stdout.contains(&format!("{second}, {first}")),
        "previous ids, newest first: {}",
        r2.stdout
    );

    // Dropping a key is refused without --yes, saying what would be lost; nothing changes.
    let refused = site.cli(&["drop-key", "s1", &first]);
    assert_eq!(refused.code, 64, "{refused:?}");
    for want in ["--yes", "unreadable", &first, "Nothing was changed"] {
        assert!(
            refused.stderr.contains(want),
            "{want:?}: {}",
            refused.stderr
        );
    }
    assert_eq!(store(&status_json(&site))["previous_count"], 2);

    let dropped = site.cli(&["drop-key", "s1", &first, "--yes"]);
    assert_eq!(dropped.code, 0, "{dropped:?}");
    assert_eq!(
        previous_ids(store(&status_json(&site))),
        std::slice::from_ref(&second)
    );
    let held = get(&mut c, false).await.unwrap();
    assert_eq!(
        held.previous.len(),
        1,
        "the daemon hands out what status shows"
    );
    assert_eq!(hex::encode(&held.previous[0].key_id), second);

    // The active key cannot be dropped: the daemon refuses (exit 1, with its code).
    let active = site.cli(&["drop-key", "s1", &third, "--yes"]);
    assert_eq!(active.code, 1, "{active:?}");
    assert!(
        active.stderr.contains("InvalidArgument"),
        "{}",
        active.stderr
    );
    let bad_hex = site.cli(&["drop-key", "s1", "xyz", "--yes"]);
    assert_eq!(bad_hex.code, 64, "{bad_hex:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_moves_a_store_to_its_newly_configured_key() {
    let site = Site::new();
    site.configure("a", &allow_me(EVERYTHING));
    let mut daemon = site.start();
    let before = get(&mut site.client().await, true).await.unwrap();
    daemon.kill();

    // The operator points the store at key `b` and restarts the daemon.
    site.configure("b", &allow_me(EVERYTHING));
    let _daemon = site.start();
    let s = store(&status_json(&site)).clone();
    assert_eq!(
        (&s["key"], &s["configured_key"]),
        (&"a".into(), &"b".into())
    );
    assert_eq!(s["needs_rewrap"], true, "{s}");

    let dry = site.cli(&["rewrap", "--store", "s1", "--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(
        dry.stdout.contains("store s1: would re-wrap"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains("1 store file(s) would be re-wrapped"),
        "{}",
        dry.stdout
    );
    assert_eq!(
        store(&status_json(&site))["key"],
        "a",
        "a dry run changes nothing"
    );

    let done = site.cli(&["rewrap"]);
    assert_eq!(done.code, 0, "{done:?}");
    assert!(
        done.stdout.contains("store s1: re-wrapped: a ["),
        "{}",
        done.stdout
    );
    assert!(
        done.stdout.contains("1 store file(s) re-wrapped"),
        "{}",
        done.stdout
    );
    let s = store(&status_json(&site)).clone();
    assert_eq!(s["key"], "b");
    assert_eq!(s["needs_rewrap"], false, "{s}");

    let again = site.cli(&["rewrap"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(
        again.stdout.contains("0 store file(s) re-wrapped"),
        "{}",
        again.stdout
    );
    // The store key itself did not change, only what wraps it.
    let after = get(&mut site.client().await, false).await.unwrap();
    assert_eq!(after.active.unwrap().key, before.active.unwrap().key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_restores_a_lost_state_dir_from_a_wrapped_copy() {
    let site = Site::new();
    site.configure("a", &allow_me(EVERYTHING));
    let mut daemon = site.start();
    let mut c = site.client().await;
    get(&mut c, true).await.unwrap();
    assert_eq!(site.cli(&["rotate", "s1"]).code, 0);
    let before = get(&mut c, false).await.unwrap();
    let copy = site.dir.join("s1-copy.json");
    std::fs::write(&copy, &before.wrapped_copy).unwrap();
    daemon.kill();

    // The state dir is lost; the operator recreates it empty.
    std::fs::remove_dir_all(site.dir.join("state")).unwrap();
    make_state_dir(&site.dir);
    let _daemon = site.start();
    let mut c = site.client().await;
    let lost = get(&mut c, false).await.unwrap_err();
    assert_eq!(lost.code(), tonic::Code::NotFound, "{lost:?}");

    let out = site.cli(&["import", copy.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("store s1 restored"), "{}", out.stdout);
    let after = get(&mut c, false).await.unwrap();
    assert_eq!(after.active.unwrap().key, before.active.unwrap().key);
    assert_eq!(after.previous.len(), 1);
    assert_eq!(after.previous[0].key, before.previous[0].key);

    // The same copy again is accepted (nothing to replace); a forged one is refused.
    assert_eq!(site.cli(&["import", copy.to_str().unwrap()]).code, 0);
    let junk = site.dir.join("junk.json");
    std::fs::write(&junk, b"{\"not\": \"a store file\"}").unwrap();
    let refused = site.cli(&["import", junk.to_str().unwrap()]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("InvalidArgument"),
        "{}",
        refused.stderr
    );
}

/// One key with a URI per "region" (two file keys), `wrap_mode = "available"`: a store made
/// while region b is gone lacks b's wrap; `status` shows it, and once b is back the heal or
/// `rewrap` adds it, after which region a may go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_region_shows_in_status_and_rewrap_fills_the_gap() {
    let site = Site::new();
    let (a, b) = (site.dir.join("a.key"), site.dir.join("b.key"));
    site.configure_body(&format!(
        "[keys.k]\nuris = [\"file://{}\", \"file://{}\"]\nwrap_mode = \"available\"\n[stores.s1]\nkey = \"k\"\n[revocation]\npoll_interval = \"200ms\"\n{}",
        a.display(),
        b.display(),
        allow_me(EVERYTHING)
    ));
    // Region b is lost: its key file is gone.
    let away = site.dir.join("b.key.away");
    std::fs::rename(&b, &away).unwrap();
    let mut daemon = site.start();
    let made = get(&mut site.client().await, true).await.unwrap();
    let s = store(&status_json(&site)).clone();
    assert_eq!(s["needs_rewrap"], true, "{s}");
    assert!(s["detail"].as_str().unwrap().contains("b.key"), "{s}");
    assert_eq!(s["key_versions"].as_array().unwrap().len(), 1, "{s}");

    // Region b is back. Once the daemon sees it ACTIVE, a re-wrap (or the heal, if it came
    // first) adds its wrap.
    std::fs::rename(&away, &b).unwrap();
    crate::common::must_return(
        "region b to be seen ACTIVE",
        Duration::from_secs(20),
        async {
            while status_json(&site)["keys"][0]["uris"][1]["state"] != "ACTIVE" {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
    .await;
    let out = site.cli(&["rewrap"]);
    assert_eq!(out.code, 0, "{out:?}");
    let s = store(&status_json(&site)).clone();
    assert_eq!(s["needs_rewrap"], false, "{s}");
    assert_eq!(s["key_versions"].as_array().unwrap().len(), 2, "{s}");

    // Now region a may go: after a restart the store opens through b alone.
    daemon.kill();
    std::fs::remove_file(&a).unwrap();
    let _daemon = site.start();
    let again = get(&mut site.client().await, false).await.unwrap();
    assert_eq!(again.active.unwrap().key, made.active.unwrap().key);
}

/// A store the daemon cannot re-wrap (its old key destroyed) is reported, and the others
/// are still re-wrapped; the run then exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_reports_a_refused_store_and_goes_on() {
    let site = Site::new();
    let c_key = site.dir.join("c.key");
    kms_broker::backend::file::create_key_file(&c_key).unwrap();
    let body = |s1: &str, s2: &str| {
        let uri = |k: &str| format!("file://{}", site.dir.join(format!("{k}.key")).display());
        format!(
            "[keys.a]\nuris = [\"{}\"]\n[keys.b]\nuris = [\"{}\"]\n[keys.c]\nuris = [\"{}\"]\n[stores.s1]\nkey = \"{s1}\"\n[stores.s2]\nkey = \"{s2}\"\n{}",
            uri("a"),
            uri("b"),
            uri("c"),
            allow_me(EVERYTHING)
        )
    };
    site.configure_body(&body("c", "a"));
    let mut daemon = site.start();
    let mut c = site.client().await;
    for id in ["s1", "s2"] {
        c.get_store_key(kms_broker_client::pb::GetStoreKeyRequest {
            store_id: id.into(),
            create: true,
        })
        .await
        .unwrap();
    }
    daemon.kill();
    // Both stores move to b; s1's old key is destroyed first, so s1 (asked first) cannot be
    // opened, and s2 must still be re-wrapped.
    site.configure_body(&body("b", "b"));
    std::fs::remove_file(&c_key).unwrap();
    let _daemon = site.start();

    let out = site.cli(&["rewrap"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("store s2: re-wrapped: a ["),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("1 store file(s) re-wrapped"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("store s1: not re-wrapped"),
        "{}",
        out.stderr
    );
    let doc = status_json(&site);
    let stores = doc["stores"].as_array().unwrap();
    assert_eq!(
        (&stores[0]["key"], &stores[0]["needs_rewrap"]),
        (&"c".into(), &true.into())
    );
    assert_eq!(
        (&stores[1]["key"], &stores[1]["needs_rewrap"]),
        (&"b".into(), &false.into())
    );
}
