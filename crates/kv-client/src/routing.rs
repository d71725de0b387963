//! Where to send a request: the client's view of the partition map (partition -> leader, from
//! `GET /v1/cluster/routes`), the nodes recently found unreachable, and the order in which to
//! try nodes for one request.
//!
//! A key request goes straight to its partition's leader, then to the partition's other
//! replicas, then to the configured endpoints (any node forwards). The view is corrected cheaply
//! from answers (`X-KV-Node` names the leader that served a write or linearizable read; a `503`
//! may name the leader) and refetched on a miss (`503`, a connection failure). Key requests
//! carry the epoch of the map they were routed by (`X-KV-Epoch`): a node the partition has
//! moved away from answers `421` with its routes, which replace the view at once. Without a
//! view, requests go to the configured endpoints.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use reqwest::Method;
use tokio::time::Instant;

use crate::api::{ClusterStatus, PartitionRoute, Routes};
use crate::retry::Deadline;
use crate::transport;

/// The map is refetched at most this often, however many requests miss.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(50);
/// Longest wait for one node's `GET /v1/cluster/routes` during a refresh.
const REFRESH_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// A node that refused or dropped a connection is tried last for this long.
const SUSPECT_FOR: Duration = Duration::from_secs(1);

/// A node to send a request to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// Base URL, e.g. `http://127.0.0.1:7001`.
    pub(crate) base: Arc<str>,
    /// The node's id when the partition map names it; `None` for a configured endpoint.
    pub(crate) node: Option<u64>,
}

/// Where one attempt goes.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) target: Target,
    /// The key's partition, when the map is known.
    pub(crate) partition: Option<u32>,
    /// The epoch of the map the key was routed by, when the map has one.
    pub(crate) epoch: Option<u64>,
}

/// The partition map as the client last learned it.
#[derive(Debug, Clone)]
struct PartitionMap {
    /// The map's epoch, when the answering node had adopted one.
    epoch: Option<u64>,
    partitions: u32,
    /// Per partition: the leader, if known.
    leaders: Vec<Option<u64>>,
    /// Per partition: the voters, preferred leader first.
    replicas: Vec<Vec<u64>>,
    /// Node id -> base URL.
    members: BTreeMap<u64, Arc<str>>,
}

impl PartitionMap {
    /// The map in `status` (its routes: see [`PartitionMap::from_routes`]).
    fn from_status(
        status: &ClusterStatus,
        scheme: &str,
        previous: Option<&PartitionMap>,
    ) -> Option<Self> {
        let mut partitions: Vec<PartitionRoute> = (0..status.partitions)
            .map(|partition| PartitionRoute {
                partition,
                leader: None,
                replicas: Vec::new(),
            })
            .collect();
        for group in &status.groups {
            let route = group
                .partition
                .and_then(|p| usize::try_from(p).ok())
                .and_then(|p| partitions.get_mut(p));
            if let Some(route) = route {
                route.leader = group.leader;
                route.replicas = group.replicas.clone();
            }
        }
        let routes = Routes {
            epoch: status.epoch.unwrap_or(0),
            partitions,
            members: status
                .members
                .iter()
                .map(|m| (m.id, m.addr.clone()))
                .collect(),
        };
        Self::from_routes(&routes, scheme, previous)
    }

    /// The map in `routes`. A partition whose leader the answering node does not know keeps
    /// the leader of `previous` if that node still replicates it.
    fn from_routes(routes: &Routes, scheme: &str, previous: Option<&PartitionMap>) -> Option<Self> {
        let partitions = u32::try_from(routes.partitions.len()).ok()?;
        if partitions == 0 {
            return None;
        }
        let count = routes.partitions.len();
        let mut leaders = vec![None; count];
        let mut replicas = vec![Vec::new(); count];
        for route in &routes.partitions {
            let p = usize::try_from(route.partition)
                .ok()
                .filter(|p| *p < count)?;
            replicas[p] = route.replicas.clone();
            let kept = previous
                .filter(|prev| prev.partitions == partitions)
                .and_then(|prev| prev.leaders[p])
                .filter(|id| route.replicas.contains(id));
            leaders[p] = route.leader.or(kept);
        }
        let members = routes
            .members
            .iter()
            .map(|(id, addr)| (*id, Arc::from(format!("{scheme}://{addr}"))))
            .collect();
        Some(PartitionMap {
            epoch: (routes.epoch > 0).then_some(routes.epoch),
            partitions,
            leaders,
            replicas,
            members,
        })
    }

    /// Nodes for `partition`: its leader, then its other replicas.
    fn targets(&self, partition: u32) -> Vec<Target> {
        let p = partition as usize;
        let leader = self.leaders.get(p).copied().flatten();
        let replicas = self.replicas.get(p).map(Vec::as_slice).unwrap_or_default();
        leader
            .into_iter()
            .chain(replicas.iter().copied())
            .filter_map(|id| self.target(id))
            .collect()
    }

    fn target(&self, id: u64) -> Option<Target> {
        self.members.get(&id).map(|base| Target {
            base: Arc::clone(base),
            node: Some(id),
        })
    }
}

/// Routing state shared by all clones of a client.
#[derive(Debug)]
pub(crate) struct Router {
    endpoints: Vec<Arc<str>>,
    /// `http` or `https`, as the first endpoint: used for the members' addresses.
    scheme: String,
    discovery: bool,
    map: RwLock<Option<Arc<PartitionMap>>>,
    /// Bumped whenever a fetched map is installed.
    generation: AtomicU64,
    /// Held while fetching; holds when the last fetch started.
    refreshing: tokio::sync::Mutex<Option<Instant>>,
    /// Base URL -> until when it is tried last.
    suspects: Mutex<HashMap<Arc<str>, Instant>>,
}

impl Router {
    /// `endpoints` are normalized base URLs (at least one). With `discovery` off the map is
    /// never fetched and every request goes to the endpoints.
    pub(crate) fn new(endpoints: Vec<Arc<str>>, discovery: bool) -> Self {
        let scheme = endpoints
            .first()
            .and_then(|e| e.split_once("://"))
            .map_or("http", |(scheme, _)| scheme)
            .to_owned();
        Router {
            endpoints,
            scheme,
            discovery,
            map: RwLock::new(None),
            generation: AtomicU64::new(0),
            refreshing: tokio::sync::Mutex::new(None),
            suspects: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> Option<Arc<PartitionMap>> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// True when requests could be routed better by fetching the map first.
    pub(crate) fn wants_map(&self) -> bool {
        self.discovery && self.map().is_none()
    }

    /// Where the next attempt of a request goes: for a key, its partition's leader, then the
    /// partition's other replicas, then the endpoints; otherwise the endpoints, then the
    /// members. Nodes recently unreachable come last.
    pub(crate) fn route(&self, key: Option<&[u8]>) -> Route {
        let map = self.map();
        let partition = match (&map, key) {
            (Some(map), Some(key)) => Some(kv_ring::partition_of(key, map.partitions).0),
            _ => None,
        };
        let mut candidates: Vec<Target> = Vec::new();
        if let (Some(map), Some(p)) = (&map, partition) {
            candidates.extend(map.targets(p));
        }
        candidates.extend(self.endpoints.iter().map(|base| Target {
            base: Arc::clone(base),
            node: None,
        }));
        if let Some(map) = &map {
            candidates.extend(map.members.keys().filter_map(|id| map.target(*id)));
        }
        let target = self.first_healthy(candidates);
        let epoch = map
            .as_ref()
            .and_then(|m| m.epoch)
            .filter(|_| partition.is_some());
        Route {
            target,
            partition,
            epoch,
        }
    }

    /// The first candidate not under suspicion; if every one is, the one whose suspicion ends
    /// first (so failing nodes are tried in turn, not the same one again and again).
    fn first_healthy(&self, candidates: Vec<Target>) -> Target {
        let index = self.best_index(&candidates);
        candidates.into_iter().nth(index).unwrap_or_else(|| Target {
            base: Arc::clone(&self.endpoints[0]),
            node: None,
        })
    }

    /// Index of the candidate [`Router::first_healthy`] picks (0 for an empty list).
    fn best_index(&self, candidates: &[Target]) -> usize {
        let now = Instant::now();
        let suspects = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
        let until = |t: &Target| suspects.get(&t.base).copied().filter(|u| *u > now);
        candidates
            .iter()
            .position(|t| until(t).is_none())
            .or_else(|| {
                candidates
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, t)| until(t))
                    .map(|(i, _)| i)
            })
            .unwrap_or(0)
    }

    /// `target` refused or dropped a connection: try it last for a while.
    pub(crate) fn suspect(&self, target: &Target) {
        let mut suspects = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
        suspects.insert(Arc::clone(&target.base), Instant::now() + SUSPECT_FOR);
    }

    /// `target` answered: it is reachable again.
    pub(crate) fn answered(&self, target: &Target) {
        let mut suspects = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
        if !suspects.is_empty() {
            suspects.remove(&target.base);
        }
    }

    /// `node` is (or, by a `503`'s hint, became) the leader of `partition`.
    pub(crate) fn observe_leader(&self, partition: u32, node: u64) {
        let mut guard = self.map.write().unwrap_or_else(|p| p.into_inner());
        let Some(map) = guard.as_mut() else {
            return;
        };
        let p = partition as usize;
        if map.leaders.get(p) == Some(&Some(node)) || !map.members.contains_key(&node) {
            return;
        }
        if let Some(leader) = Arc::make_mut(map).leaders.get_mut(p) {
            *leader = Some(node);
        }
    }

    /// Installs the map in `status` (an answer to `GET /v1/cluster`).
    pub(crate) fn install(&self, status: &ClusterStatus) {
        let mut guard = self.map.write().unwrap_or_else(|p| p.into_inner());
        if let Some(map) = PartitionMap::from_status(status, &self.scheme, guard.as_deref()) {
            *guard = Some(Arc::new(map));
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Installs the map in `routes` (an answer to `GET /v1/cluster/routes`, or a `421`'s),
    /// unless the view already routes by a newer epoch. True if it was installed.
    pub(crate) fn install_routes(&self, routes: &Routes) -> bool {
        let mut guard = self.map.write().unwrap_or_else(|p| p.into_inner());
        let newer = guard
            .as_ref()
            .and_then(|m| m.epoch)
            .is_some_and(|have| have > routes.epoch);
        if newer {
            return false;
        }
        match PartitionMap::from_routes(routes, &self.scheme, guard.as_deref()) {
            Some(map) => {
                *guard = Some(Arc::new(map));
                self.generation.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Refetches the map, unless discovery is off, another caller is already refetching (when
    /// a map is known), or the last fetch started less than [`MIN_REFRESH_INTERVAL`] ago.
    /// Asks the members (reachable ones first), then the endpoints, until one answers or the
    /// deadline passes; on failure the old map stays.
    pub(crate) async fn refresh(&self, http: &reqwest::Client, deadline: Deadline) {
        if !self.discovery {
            return;
        }
        let generation = self.generation.load(Ordering::Relaxed);
        let mut last_fetch = if self.map().is_some() {
            match self.refreshing.try_lock() {
                Ok(guard) => guard,
                Err(_) => return,
            }
        } else {
            match tokio::time::timeout(deadline.remaining(), self.refreshing.lock()).await {
                Ok(guard) => guard,
                Err(_) => return,
            }
        };
        if self.generation.load(Ordering::Relaxed) != generation {
            return; // another caller installed a fresh map while this one waited
        }
        if last_fetch.is_some_and(|at| at.elapsed() < MIN_REFRESH_INTERVAL) {
            return;
        }
        *last_fetch = Some(Instant::now());

        let mut sources: Vec<Target> = self
            .map()
            .map(|map| {
                map.members
                    .keys()
                    .filter_map(|id| map.target(*id))
                    .collect()
            })
            .unwrap_or_default();
        sources.extend(self.endpoints.iter().map(|base| Target {
            base: Arc::clone(base),
            node: None,
        }));
        let mut seen = Vec::new();
        while let Some(source) = self.pop_best(&mut sources) {
            if seen.contains(&source.base) {
                continue;
            }
            seen.push(Arc::clone(&source.base));
            let timeout = deadline.remaining().min(REFRESH_ATTEMPT_TIMEOUT);
            if timeout.is_zero() {
                return;
            }
            let reply = transport::send(
                http,
                Method::GET,
                &source.base,
                "/v1/cluster/routes",
                Default::default(),
                Default::default(),
                timeout,
            )
            .await;
            match reply {
                Ok(reply) if reply.status.is_success() => {
                    if let Ok(routes) = reply.json::<Routes>() {
                        self.answered(&source);
                        self.install_routes(&routes);
                        return;
                    }
                }
                Ok(_) => {}
                Err(
                    transport::Failure::Connect(_)
                    | transport::Failure::Lost(_)
                    | transport::Failure::Tls(_),
                ) => {
                    self.suspect(&source);
                }
                Err(transport::Failure::TimedOut) => {}
            }
        }
    }

    /// Removes and returns the source [`Router::first_healthy`] would pick.
    fn pop_best(&self, sources: &mut Vec<Target>) -> Option<Target> {
        if sources.is_empty() {
            return None;
        }
        let index = self.best_index(sources);
        Some(sources.remove(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GroupStatus, Member};

    fn group(partition: u32, replicas: &[u64], leader: Option<u64>) -> GroupStatus {
        GroupStatus {
            partition: Some(partition),
            replicas: replicas.to_vec(),
            voters: vec![],
            learners: Vec::new(),
            leader,
            term: 1,
            role: "follower".into(),
            last_log_index: None,
            commit_index: None,
            applied_index: None,
            replication: None,
        }
    }

    fn status(leaders: [Option<u64>; 2]) -> ClusterStatus {
        ClusterStatus {
            node: 1,
            members: (1..=3)
                .map(|id| Member {
                    id,
                    addr: format!("127.0.0.1:700{id}"),
                })
                .collect(),
            partitions: 2,
            replication_factor: 3,
            vnodes: 64,
            epoch: Some(1),
            moves: Vec::new(),
            groups: vec![
                group(0, &[1, 2, 3], leaders[0]),
                group(1, &[2, 3, 1], leaders[1]),
            ],
        }
    }

    fn router() -> Router {
        Router::new(vec![Arc::from("http://lb:80")], true)
    }

    /// A key of `partition` (of 2).
    fn key_of(partition: u32) -> Vec<u8> {
        (0u32..)
            .map(|i| format!("k{i}").into_bytes())
            .find(|k| kv_ring::partition_of(k, 2).0 == partition)
            .unwrap()
    }

    fn routes(epoch: u64, leader_of_0: u64) -> Routes {
        Routes {
            epoch,
            partitions: vec![
                crate::api::PartitionRoute {
                    partition: 0,
                    leader: Some(leader_of_0),
                    replicas: vec![1, 2, 3],
                },
                crate::api::PartitionRoute {
                    partition: 1,
                    leader: None,
                    replicas: vec![2, 3, 1],
                },
            ],
            members: (1..=3)
                .map(|id| (id, format!("127.0.0.1:700{id}")))
                .collect(),
        }
    }

    #[test]
    fn routes_carry_their_epoch_and_an_older_table_changes_nothing() {
        let router = router();
        router.install_routes(&routes(5, 2));
        let route = router.route(Some(&key_of(0)));
        assert_eq!(&*route.target.base, "http://127.0.0.1:7002");
        assert_eq!(route.epoch, Some(5));
        // Partition 1's leader is unknown: its preferred replica first.
        assert_eq!(
            &*router.route(Some(&key_of(1))).target.base,
            "http://127.0.0.1:7002"
        );
        router.install_routes(&routes(4, 3));
        assert_eq!(
            &*router.route(Some(&key_of(0))).target.base,
            "http://127.0.0.1:7002"
        );
        router.install_routes(&routes(6, 3));
        let route = router.route(Some(&key_of(0)));
        assert_eq!(&*route.target.base, "http://127.0.0.1:7003");
        assert_eq!(route.epoch, Some(6));
        // Requests without a key are not routed by the map's epoch.
        assert_eq!(router.route(None).epoch, None);
    }

    #[test]
    fn without_a_map_requests_go_to_the_endpoints() {
        let router = router();
        assert!(router.wants_map());
        let route = router.route(Some(b"k"));
        assert_eq!(&*route.target.base, "http://lb:80");
        assert_eq!(route.partition, None);
    }

    #[test]
    fn key_requests_go_to_the_partition_leader() {
        let router = router();
        router.install(&status([Some(3), None]));
        assert!(!router.wants_map());
        let route = router.route(Some(&key_of(0)));
        assert_eq!(route.partition, Some(0));
        assert_eq!(route.target.node, Some(3));
        assert_eq!(&*route.target.base, "http://127.0.0.1:7003");
        // Leader unknown: the preferred leader, which forwards if it must.
        assert_eq!(router.route(Some(&key_of(1))).target.node, Some(2));
        // Not a key: the configured endpoint.
        assert_eq!(&*router.route(None).target.base, "http://lb:80");
    }

    #[test]
    fn unreachable_nodes_are_tried_last_and_in_turn() {
        let router = router();
        router.install(&status([Some(3), None]));
        let key = key_of(0);
        let mut order = Vec::new();
        for _ in 0..5 {
            let target = router.route(Some(&key)).target;
            order.push(target.base.to_string());
            router.suspect(&target);
        }
        assert_eq!(
            order,
            [
                "http://127.0.0.1:7003", // the leader
                "http://127.0.0.1:7001", // the other replicas
                "http://127.0.0.1:7002",
                "http://lb:80",          // the endpoint
                "http://127.0.0.1:7003", // all suspect: the longest suspected
            ]
        );
        router.answered(&Target {
            base: Arc::from("http://127.0.0.1:7002"),
            node: Some(2),
        });
        assert_eq!(router.route(Some(&key)).target.node, Some(2));
    }

    #[test]
    fn observed_leaders_update_the_map_and_survive_a_view_without_them() {
        let router = router();
        router.install(&status([Some(3), None]));
        router.observe_leader(0, 2);
        assert_eq!(router.route(Some(&key_of(0))).target.node, Some(2));
        router.observe_leader(0, 99); // not a member: ignored
        assert_eq!(router.route(Some(&key_of(0))).target.node, Some(2));
        // A node that does not know partition 0's leader does not erase it.
        router.install(&status([None, Some(1)]));
        assert_eq!(router.route(Some(&key_of(0))).target.node, Some(2));
        assert_eq!(router.route(Some(&key_of(1))).target.node, Some(1));
    }

    #[test]
    fn without_discovery_the_map_is_never_wanted() {
        let router = Router::new(vec![Arc::from("https://a:1")], false);
        assert!(!router.wants_map());
        assert_eq!(router.scheme, "https");
    }
}
