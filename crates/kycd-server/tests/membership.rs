//! Partition leases across instances, on the real PostgreSQL that
//! `KYCD_TEST_POSTGRES_URL` names: every partition is owned by exactly
//! one instance, the one rendezvous hashing wants among the live ones;
//! an instance leaving hands its partitions to the others, one joining
//! takes its share, and every move is a new lease epoch (fenced).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kycd_log::postgres::cluster::Cluster;
use kycd_log::postgres::testing::{url_or_skip, Schemas};
use kycd_log::postgres::Database;
use kycd_server::cluster::{desired_owner, partition_lease, Membership};
use tokio::sync::watch;

const PARTITIONS: u32 = 16;
const DEADLINE: Duration = Duration::from_secs(60);

struct Member {
    id: &'static str,
    membership: Arc<Membership>,
    roles: kycd_server::cluster::Roles,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn member(db: &Database, id: &'static str) -> Member {
    let cluster = Cluster::join(db.clone(), id, "test").await.unwrap();
    let (membership, roles) = Membership::join(cluster, PARTITIONS).await;
    let (stop, stopped) = watch::channel(false);
    let m = membership.clone();
    let task = tokio::spawn(async move {
        m.run(stopped).await.unwrap();
    });
    Member {
        id,
        membership,
        roles,
        stop,
        task,
    }
}

/// Partition -> (owner, epoch), of the leases not expired.
async fn owners(m: &Member) -> HashMap<u32, (String, i64)> {
    let view = m.membership.view("postgres").await.unwrap();
    view.leases
        .iter()
        .filter(|l| !l.expired)
        .filter_map(|l| {
            let k = l.name.strip_prefix("partition/")?.parse().ok()?;
            Some((k, (l.owner.clone()?, l.epoch)))
        })
        .collect()
}

/// Wait until every partition is held by the instance it wants among `live`.
async fn settled(m: &Member, live: &[&str]) -> HashMap<u32, (String, i64)> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = owners(m).await;
        let placed =
            (0..PARTITIONS).all(|k| now.get(&k).map(|(o, _)| o.as_str()) == desired_owner(k, live));
        if placed {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "never settled on {live:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_follow_the_instances_that_join_and_leave() {
    let Some(url) = url_or_skip("partitions_follow_the_instances_that_join_and_leave") else {
        return;
    };
    let schemas = Schemas::new(&url).await;
    let db = schemas.database().await;
    let a = member(&db, "kycd-a").await;
    let b = member(&db, "kycd-b").await;
    let c = member(&db, "kycd-c").await;
    let three = settled(&a, &["kycd-a", "kycd-b", "kycd-c"]).await;
    for m in [&a, &b, &c] {
        let view = m.membership.view("postgres").await.unwrap();
        assert_eq!(view.partitions, PARTITIONS);
        let mine: Vec<u32> = view
            .instances
            .iter()
            .find(|i| i.instance.id == m.id)
            .unwrap()
            .partitions
            .clone();
        let expected: Vec<u32> = (0..PARTITIONS).filter(|k| three[k].0 == m.id).collect();
        assert_eq!(mine, expected, "{} lists what it holds", m.id);
    }

    // kycd-c stops cleanly: its partitions go to the two left, the others
    // stay where they were (same epoch: never moved).
    c.stop.send(true).unwrap();
    c.task.await.unwrap();
    // A clean stop leaves the registry at once: no one waits for its
    // heartbeat to age before placing its partitions.
    let view = a.membership.view("postgres").await.unwrap();
    assert!(view.instances.iter().all(|i| i.instance.id != "kycd-c"));
    let two = settled(&a, &["kycd-a", "kycd-b"]).await;
    for k in 0..PARTITIONS {
        if three[&k].0 == "kycd-c" {
            assert!(
                two[&k].1 > three[&k].1,
                "partition {k} moved under a new epoch"
            );
        } else {
            assert_eq!(two[&k], three[&k], "partition {k} stayed");
        }
    }

    // kycd-d joins: it takes its share, a few at a time, each under a new
    // epoch; nothing is ever held twice.
    let d = member(&db, "kycd-d").await;
    let four = settled(&a, &["kycd-a", "kycd-b", "kycd-d"]).await;
    for k in 0..PARTITIONS {
        if four[&k].0 == "kycd-d" {
            assert!(four[&k].1 > two[&k].1, "partition {k}");
        }
    }
    // What each instance's projector would work under is what it holds:
    // the partitions and their current epochs.
    let deadline = Instant::now() + DEADLINE;
    for m in [&a, &b, &d] {
        let expected: Vec<(u32, i64)> = (0..PARTITIONS)
            .filter(|k| four[k].0 == m.id)
            .map(|k| (k, four[&k].1))
            .collect();
        loop {
            let published: Vec<(u32, i64)> = m
                .roles
                .partitions
                .borrow()
                .iter()
                .map(|(k, f)| {
                    assert_eq!(f.lease, partition_lease(*k));
                    assert_eq!(f.owner, m.id);
                    (*k, f.epoch)
                })
                .collect();
            if published == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {published:?} != {expected:?}",
                m.id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for m in [a, b, d] {
        m.stop.send(true).unwrap();
        m.task.await.unwrap();
    }
    schemas.drop_all().await;
}
