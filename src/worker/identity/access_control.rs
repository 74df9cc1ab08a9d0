//! Who may use the proxy: optional allow-lists of users and of groups (names or numeric ids),
//! resolved once at startup. A connection is allowed when its user is listed, or is a member
//! (primary or supplementary) of a listed group. With no allow-list everyone is allowed; with
//! any allow-list, a connection whose user could not be determined is refused.
//!
//! Group memberships come from `getgrouplist(3)` (NSS) and are cached per uid for a short
//! time, so that adding someone to a group takes effect within a minute without a restart.
//! The worker looks a caller's groups up on a blocking-pool thread when they are not cached
//! ([`AllowList::needs_group_lookup`], [`AllowList::look_up_groups`]), so a slow NSS source
//! never stalls a shard.

use crate::worker::identity::peer_identity::PeerIdentity;
use nix::unistd::{Gid, Group, Uid, User};
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a uid's group list is trusted.
const GROUP_CACHE_TTL: Duration = Duration::from_secs(60);
/// Most uids whose group lists are cached at once.
const GROUP_CACHE_CAPACITY: usize = 4096;

/// A refused request: the HTTP status and an OpenAI-style error that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Denial {
    pub message: String,
}

impl Denial {
    /// The OpenAI error `type`.
    pub(crate) const KIND: &'static str = "permission_error";
    /// The OpenAI error `code`.
    pub(crate) const CODE: &'static str = "user_not_allowed";

    /// The JSON error body (`{"error":{"message",...}}`).
    #[cfg(test)]
    pub(crate) fn to_body(&self) -> String {
        openai_wire::api_error::error_body(&self.message, Self::KIND, Some(Self::CODE), None)
    }
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Debug, Clone)]
struct AllowedGroup {
    gid: u32,
    /// The name for messages (the id when it has no name).
    label: String,
}

/// The allow-lists. Build with [`AllowList::from_config`].
pub(crate) struct AllowList {
    users: HashSet<u32>,
    groups: Vec<AllowedGroup>,
    memberships: Mutex<HashMap<u32, (Instant, Vec<u32>)>>,
    ttl: Duration,
}

/// Splits `alice,1001` style values (each item may itself hold commas); empty items ignored.
fn items<S: AsRef<str>>(values: &[S]) -> impl Iterator<Item = &str> {
    values
        .iter()
        .flat_map(|v| v.as_ref().split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

impl AllowList {
    /// Resolves `--allow-users` and `--allow-groups` values (names or numeric ids,
    /// comma-separated, repeatable). `Ok(None)` when both are empty: everyone is allowed.
    /// Unknown names are an error; numeric ids are taken as given (they need not exist yet).
    pub(crate) fn from_config<U: AsRef<str>, G: AsRef<str>>(
        allow_users: &[U],
        allow_groups: &[G],
    ) -> Result<Option<AllowList>, String> {
        let mut users = HashSet::new();
        for item in items(allow_users) {
            let uid = match item.parse::<u32>() {
                Ok(uid) => uid,
                Err(_) => match User::from_name(item) {
                    Ok(Some(user)) => user.uid.as_raw(),
                    Ok(None) => {
                        return Err(format!(
                            "--allow-users: there is no user named {item:?} on this system"
                        ))
                    }
                    Err(e) => {
                        return Err(format!("--allow-users: cannot look up user {item:?}: {e}"))
                    }
                },
            };
            users.insert(uid);
        }
        let mut groups: Vec<AllowedGroup> = Vec::new();
        for item in items(allow_groups) {
            let group = match item.parse::<u32>() {
                Ok(gid) => AllowedGroup {
                    gid,
                    label: match Group::from_gid(Gid::from_raw(gid)) {
                        Ok(Some(g)) => g.name,
                        _ => gid.to_string(),
                    },
                },
                Err(_) => match Group::from_name(item) {
                    Ok(Some(g)) => AllowedGroup {
                        gid: g.gid.as_raw(),
                        label: g.name,
                    },
                    Ok(None) => {
                        return Err(format!(
                            "--allow-groups: there is no group named {item:?} on this system"
                        ))
                    }
                    Err(e) => {
                        return Err(format!(
                            "--allow-groups: cannot look up group {item:?}: {e}"
                        ))
                    }
                },
            };
            if !groups.iter().any(|g| g.gid == group.gid) {
                groups.push(group);
            }
        }
        if users.is_empty() && groups.is_empty() {
            return Ok(None);
        }
        Ok(Some(AllowList {
            users,
            groups,
            memberships: Mutex::new(HashMap::new()),
            ttl: GROUP_CACHE_TTL,
        }))
    }

    /// A one-line description for the startup log.
    pub(crate) fn describe(&self) -> String {
        let mut users: Vec<String> = self
            .users
            .iter()
            .map(
                |&uid| match crate::worker::identity::peer_identity::user_name(uid) {
                    Some(name) => format!("{name}({uid})"),
                    None => uid.to_string(),
                },
            )
            .collect();
        users.sort();
        let groups: Vec<String> = self
            .groups
            .iter()
            .map(|g| format!("{}({})", g.label, g.gid))
            .collect();
        format!(
            "allowed users: [{}]; allowed groups: [{}]",
            users.join(", "),
            groups.join(", ")
        )
    }

    /// Allows or refuses one request.
    pub(crate) fn decide(&self, identity: &PeerIdentity) -> Result<(), Denial> {
        let Some(uid) = identity.uid else {
            return Err(Denial {
                message: format!(
                    "the proxy could not determine which local user opened this connection, and it only serves allowed users; {}",
                    self.remedy()
                ),
            });
        };
        if self.users.contains(&uid) {
            return Ok(());
        }
        if !self.groups.is_empty() {
            let gids = self.groups_of(uid, identity.user.as_deref());
            if self.groups.iter().any(|g| gids.contains(&g.gid)) {
                return Ok(());
            }
        }
        let who = match &identity.user {
            Some(name) => format!("user {name} (uid {uid})"),
            None => format!("uid {uid}"),
        };
        Err(Denial {
            message: format!("{who} is not allowed to use this proxy; {}", self.remedy()),
        })
    }

    /// Whether [`AllowList::decide`] would look up `identity`'s group memberships (NSS, which
    /// may block): a known uid that is not listed itself, groups are listed, and its groups
    /// are not cached.
    pub(crate) fn needs_group_lookup(&self, identity: &PeerIdentity) -> bool {
        let Some(uid) = identity.uid else {
            return false;
        };
        if self.users.contains(&uid) || self.groups.is_empty() {
            return false;
        }
        let cache = self.memberships.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(&uid)
            .is_none_or(|(at, _)| at.elapsed() >= self.ttl)
    }

    /// Looks up and caches `identity`'s group memberships (blocking; run it off the
    /// request's thread when [`AllowList::needs_group_lookup`] says so).
    pub(crate) fn look_up_groups(&self, identity: &PeerIdentity) {
        if let Some(uid) = identity.uid {
            self.groups_of(uid, identity.user.as_deref());
        }
    }

    fn remedy(&self) -> String {
        match self.groups.as_slice() {
            [] => "ask an administrator to add you to the proxy's allowed users".to_owned(),
            [one] => format!("ask an administrator to add you to group {}", one.label),
            many => format!(
                "ask an administrator to add you to one of the groups {}",
                many.iter()
                    .map(|g| g.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Primary and supplementary gids of `uid`, cached for a short time. A uid with no
    /// passwd entry has no groups.
    fn groups_of(&self, uid: u32, name_hint: Option<&str>) -> Vec<u32> {
        let now = Instant::now();
        {
            let cache = self.memberships.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, gids)) = cache.get(&uid) {
                if now.duration_since(*at) < self.ttl {
                    return gids.clone();
                }
            }
        }
        let gids = lookup_groups(uid, name_hint);
        let mut cache = self.memberships.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= GROUP_CACHE_CAPACITY && !cache.contains_key(&uid) {
            let ttl = self.ttl;
            cache.retain(|_, (at, _)| now.duration_since(*at) < ttl);
            if cache.len() >= GROUP_CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(uid, (now, gids.clone()));
        gids
    }
}

fn lookup_groups(uid: u32, _name_hint: Option<&str>) -> Vec<u32> {
    // The passwd entry gives both the name and the primary group that getgrouplist needs.
    let user = match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => user,
        Ok(None) => return Vec::new(),
        Err(e) => {
            tracing::warn!(uid, "cannot look up the user's groups: {e}");
            return Vec::new();
        }
    };
    let Ok(name) = CString::new(user.name.clone()) else {
        return vec![user.gid.as_raw()];
    };
    match nix::unistd::getgrouplist(&name, user.gid) {
        Ok(gids) => gids.into_iter().map(Gid::as_raw).collect(),
        Err(e) => {
            tracing::warn!(uid, "cannot list the user's groups: {e}");
            vec![user.gid.as_raw()]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn me() -> PeerIdentity {
        PeerIdentity::from_uid(nix::unistd::geteuid().as_raw())
    }

    #[test]
    fn no_lists_allow_everyone() {
        let none: [&str; 0] = [];
        assert!(AllowList::from_config(&none, &none).unwrap().is_none());
        assert!(AllowList::from_config(&[" , "], &[""]).unwrap().is_none());
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        let none: [&str; 0] = [];
        let e = AllowList::from_config(&["no-such-user-xq7"], &none)
            .err()
            .unwrap();
        assert!(
            e.contains("--allow-users") && e.contains("no-such-user-xq7"),
            "{e}"
        );
        let e = AllowList::from_config(&none, &["no-such-group-xq7"])
            .err()
            .unwrap();
        assert!(
            e.contains("--allow-groups") && e.contains("no-such-group-xq7"),
            "{e}"
        );
    }

    #[test]
    fn user_list_by_id_and_name() {
        let mine = me();
        let none: [&str; 0] = [];
        let by_id = AllowList::from_config(&[format!("4000001,{}", mine.uid.unwrap())], &none)
            .unwrap()
            .unwrap();
        assert!(by_id.decide(&mine).is_ok());
        if let Some(name) = &mine.user {
            let by_name = AllowList::from_config(&[name.as_str()], &none)
                .unwrap()
                .unwrap();
            assert!(by_name.decide(&mine).is_ok());
        }
        let other = AllowList::from_config(&["4000001"], &none)
            .unwrap()
            .unwrap();
        let denial = other.decide(&mine).unwrap_err();
        assert!(denial.message.contains("is not allowed to use this proxy"));
        assert!(
            denial.message.contains("allowed users"),
            "{}",
            denial.message
        );
    }

    #[test]
    fn unknown_identity_is_denied_when_a_list_is_set() {
        let none: [&str; 0] = [];
        let list = AllowList::from_config(&["0"], &none).unwrap().unwrap();
        let denial = list.decide(&PeerIdentity::unknown()).unwrap_err();
        assert!(denial.message.contains("could not determine"));
        let body: serde_json::Value = serde_json::from_str(&denial.to_body()).unwrap();
        assert_eq!(body["error"]["type"], "permission_error");
        assert_eq!(body["error"]["code"], "user_not_allowed");
    }

    #[test]
    fn primary_group_counts() {
        let mine = me();
        let user = User::from_uid(Uid::from_raw(mine.uid.unwrap()))
            .unwrap()
            .unwrap();
        let none: [&str; 0] = [];
        let list = AllowList::from_config(&none, &[user.gid.as_raw().to_string()])
            .unwrap()
            .unwrap();
        assert!(list.decide(&mine).is_ok());
        let stranger = PeerIdentity {
            uid: Some(3_999_998),
            user: None,
        };
        let denial = list.decide(&stranger).unwrap_err();
        assert!(
            denial.message.starts_with("uid 3999998 is not allowed"),
            "{}",
            denial.message
        );
        assert!(denial.message.contains("add you to group"));
    }

    struct TempAccounts {
        users: Vec<String>,
        groups: Vec<String>,
    }

    impl Drop for TempAccounts {
        fn drop(&mut self) {
            for u in &self.users {
                let _ = Command::new("userdel").arg(u).status();
            }
            for g in &self.groups {
                let _ = Command::new("groupdel").arg(g).status();
            }
        }
    }

    fn run(cmd: &str, args: &[&str]) -> bool {
        Command::new(cmd)
            .args(args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    #[test]
    fn real_users_and_groups() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to create users");
            return;
        }
        let tag = format!("{:x}", std::process::id() & 0xffff);
        let group = format!("cxg{tag}");
        let alice = format!("cxa{tag}");
        let bob = format!("cxb{tag}");
        let mut accounts = TempAccounts {
            users: Vec::new(),
            groups: Vec::new(),
        };
        if !run("groupadd", &[&group]) {
            eprintln!("skipped: groupadd failed");
            return;
        }
        accounts.groups.push(group.clone());
        for (user, extra) in [(&alice, true), (&bob, false)] {
            let mut args = vec!["--no-create-home", "--shell", "/usr/sbin/nologin"];
            if extra {
                args.extend(["-G", group.as_str()]);
            }
            args.push(user);
            if !run("useradd", &args) {
                eprintln!("skipped: useradd {user} failed");
                return;
            }
            accounts.users.push(user.clone());
        }
        let none: [&str; 0] = [];
        let list = AllowList::from_config(&none, &[group.as_str()])
            .unwrap()
            .unwrap();
        let uid_of = |name: &str| User::from_name(name).unwrap().unwrap().uid.as_raw();
        let alice_id = PeerIdentity::from_uid(uid_of(&alice));
        let bob_id = PeerIdentity::from_uid(uid_of(&bob));
        assert!(list.decide(&alice_id).is_ok(), "supplementary group member");
        let denial = list.decide(&bob_id).unwrap_err();
        assert_eq!(
            denial.message,
            format!(
                "user {bob} (uid {}) is not allowed to use this proxy; ask an administrator to add you to group {group}",
                bob_id.uid.unwrap()
            )
        );
        // Users and groups combine: listing bob by name lets him in too.
        let both = AllowList::from_config(&[bob.as_str()], &[group.as_str()])
            .unwrap()
            .unwrap();
        assert!(both.decide(&bob_id).is_ok() && both.decide(&alice_id).is_ok());
        assert!(both.describe().contains(&group));
        // A stale cache entry expires: with a zero TTL, a new membership is seen at once.
        let mut fresh = AllowList::from_config(&none, &[group.as_str()])
            .unwrap()
            .unwrap();
        fresh.ttl = Duration::ZERO;
        assert!(fresh.decide(&bob_id).is_err());
        assert!(run("usermod", &["-a", "-G", &group, &bob]));
        assert!(fresh.decide(&bob_id).is_ok());
        // The long-TTL list still has bob's old groups cached.
        assert!(list.decide(&bob_id).is_err());
        // Only an uncached member of no listed user needs a look-up off the request thread.
        assert!(!list.needs_group_lookup(&bob_id));
        assert!(!both.needs_group_lookup(&bob_id), "listed by name");
        assert!(!list.needs_group_lookup(&PeerIdentity::unknown()));
        let cold = AllowList::from_config(&none, &[group.as_str()])
            .unwrap()
            .unwrap();
        assert!(cold.needs_group_lookup(&bob_id));
        cold.look_up_groups(&bob_id);
        assert!(!cold.needs_group_lookup(&bob_id));
        assert!(cold.decide(&bob_id).is_ok());
    }
}
