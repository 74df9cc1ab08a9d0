//! The worker's in-memory store of responses made in bridge mode with `store` not false, so
//! that later requests may continue them (`previous_response_id`), refer to their items
//! (`item_reference`) or read them back (`GET /v1/responses/{id}`).
//!
//! Owns: the stored responses, each with its owner (the caller's uid from the kernel, `None`
//! for callers it cannot name, who share one bucket), and its bounds: total bytes, bytes per
//! owner, count and age. A look-up names the owner, and another owner's response is simply
//! not there. Nothing is written to disk; a restart forgets everything.
//!
//! Shared by every shard (one mutex; each operation is a few map operations, never I/O) and
//! meant to be shared with the WebSocket route as well. Uses only std and serde_json.

use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Whose response it is: the caller's uid, or `None` for callers the kernel could not name.
pub(crate) type Owner = Option<u32>;

/// How much the store may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoreLimits {
    /// Bytes of all stored responses together (the memory their parsed JSON holds, as
    /// `held_bytes` estimates it).
    pub total_bytes: usize,
    /// Bytes of one owner's responses.
    pub bytes_per_owner: usize,
    /// Number of stored responses.
    pub count: usize,
    /// Age after which a response is forgotten.
    pub max_age: Duration,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            total_bytes: 64 << 20,
            bytes_per_owner: 16 << 20,
            count: 10_000,
            max_age: Duration::from_secs(3600),
        }
    }
}

/// One stored response: what a continuation needs.
#[derive(Debug)]
pub(crate) struct StoredResponse {
    /// The `Response` object as the client received it last.
    pub response: Value,
    /// The whole input the response was made from (references and previous responses
    /// already expanded).
    pub input: Vec<Value>,
    /// The output items, as emitted.
    pub output: Vec<Value>,
}

impl StoredResponse {
    /// Input then output: what `previous_response_id` stands for.
    pub(crate) fn conversation(&self) -> Vec<Value> {
        self.input.iter().chain(&self.output).cloned().collect()
    }

    /// The item with this id, among the input and output items.
    pub(crate) fn item(&self, id: &str) -> Option<&Value> {
        self.output
            .iter()
            .rev()
            .chain(self.input.iter().rev())
            .find(|item| item.get("id").and_then(Value::as_str) == Some(id))
    }

    /// The memory it holds, as [`held_bytes`] estimates it.
    fn bytes(&self) -> usize {
        held_bytes(&self.response)
            + self.input.iter().map(held_bytes).sum::<usize>()
            + self.output.iter().map(held_bytes).sum::<usize>()
    }
}

/// Bytes counted for each entry of a JSON object besides its key's text and its value (the
/// key's `String` and the map's share of its node).
const OBJECT_ENTRY_OVERHEAD: usize = std::mem::size_of::<String>() + 16;

/// The memory a parsed JSON value holds, estimated: each value's node, each string's text and
/// each object entry. Not the serialized length: `[0,0,…]` takes 2 bytes an element as text
/// and 16 times that parsed, and the bounds are there for the memory.
fn held_bytes(value: &Value) -> usize {
    std::mem::size_of::<Value>()
        + match value {
            Value::String(text) => text.len(),
            Value::Array(items) => items.iter().map(held_bytes).sum(),
            Value::Object(fields) => fields
                .iter()
                .map(|(key, value)| OBJECT_ENTRY_OVERHEAD + key.len() + held_bytes(value))
                .sum(),
            Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        }
}

/// Why a response was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStored {
    /// Larger than one owner's share (or the whole store) on its own.
    TooLarge { bytes: usize },
}

struct Entry {
    owner: Owner,
    stored_at: Instant,
    bytes: usize,
    response: Arc<StoredResponse>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Response ids, oldest first (insertion order, which is age order).
    order: VecDeque<String>,
    /// (owner, item id) → the newest response holding that item.
    items: HashMap<(Owner, String), String>,
    bytes_by_owner: HashMap<Owner, usize>,
    total_bytes: usize,
}

/// The store. See the module docs.
pub(crate) struct ResponseStore {
    limits: StoreLimits,
    inner: Mutex<Inner>,
}

impl ResponseStore {
    pub(crate) fn new(limits: StoreLimits) -> Self {
        ResponseStore {
            limits,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Stores `response` under `id` for `owner` (replacing an earlier one with that id),
    /// evicting expired responses, then the owner's oldest until the owner is within its
    /// share, then the oldest of anyone until the store is within its total and count.
    pub(crate) fn insert(
        &self,
        owner: Owner,
        id: &str,
        response: StoredResponse,
    ) -> Result<(), NotStored> {
        self.insert_at(owner, id, response, Instant::now())
    }

    fn insert_at(
        &self,
        owner: Owner,
        id: &str,
        response: StoredResponse,
        now: Instant,
    ) -> Result<(), NotStored> {
        let bytes = response.bytes();
        if bytes > self.limits.bytes_per_owner.min(self.limits.total_bytes)
            || self.limits.count == 0
        {
            return Err(NotStored::TooLarge { bytes });
        }
        let mut inner = self.lock();
        inner.remove(id);
        inner.expire(now, self.limits.max_age);
        while inner.bytes_by_owner.get(&owner).copied().unwrap_or(0) + bytes
            > self.limits.bytes_per_owner
        {
            let Some(oldest) = inner.oldest_of(owner) else {
                break;
            };
            inner.remove(&oldest);
        }
        while inner.total_bytes + bytes > self.limits.total_bytes
            || inner.entries.len() >= self.limits.count
        {
            let Some(oldest) = inner.order.front().cloned() else {
                break;
            };
            inner.remove(&oldest);
        }
        for item in response.input.iter().chain(&response.output) {
            if let Some(item_id) = item.get("id").and_then(Value::as_str) {
                inner
                    .items
                    .insert((owner, item_id.to_string()), id.to_string());
            }
        }
        *inner.bytes_by_owner.entry(owner).or_default() += bytes;
        inner.total_bytes += bytes;
        inner.order.push_back(id.to_string());
        inner.entries.insert(
            id.to_string(),
            Entry {
                owner,
                stored_at: now,
                bytes,
                response: Arc::new(response),
            },
        );
        Ok(())
    }

    /// `owner`'s response `id`, if stored and not expired. Another owner's is `None`.
    pub(crate) fn get(&self, owner: Owner, id: &str) -> Option<Arc<StoredResponse>> {
        self.get_at(owner, id, Instant::now())
    }

    fn get_at(&self, owner: Owner, id: &str, now: Instant) -> Option<Arc<StoredResponse>> {
        let mut inner = self.lock();
        inner.expire(now, self.limits.max_age);
        inner
            .entries
            .get(id)
            .filter(|entry| entry.owner == owner)
            .map(|entry| entry.response.clone())
    }

    /// `owner`'s stored item `id` (from the newest response holding it).
    pub(crate) fn item(&self, owner: Owner, id: &str) -> Option<Value> {
        let mut inner = self.lock();
        inner.expire(Instant::now(), self.limits.max_age);
        let response_id = inner.items.get(&(owner, id.to_string()))?;
        let entry = inner.entries.get(response_id)?;
        (entry.owner == owner)
            .then(|| entry.response.item(id).cloned())
            .flatten()
    }

    /// How many responses and bytes are stored (for tests).
    #[cfg(test)]
    pub(crate) fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.total_bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent maps (each step is complete), so a
        // poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    fn remove(&mut self, id: &str) {
        let Some(entry) = self.entries.remove(id) else {
            return;
        };
        if let Some(pos) = self.order.iter().position(|x| x == id) {
            self.order.remove(pos);
        }
        self.total_bytes -= entry.bytes;
        if let Some(bytes) = self.bytes_by_owner.get_mut(&entry.owner) {
            *bytes -= entry.bytes;
            if *bytes == 0 {
                self.bytes_by_owner.remove(&entry.owner);
            }
        }
        for item in entry.response.input.iter().chain(&entry.response.output) {
            if let Some(item_id) = item.get("id").and_then(Value::as_str) {
                let key = (entry.owner, item_id.to_string());
                if self.items.get(&key).map(String::as_str) == Some(id) {
                    self.items.remove(&key);
                }
            }
        }
    }

    fn expire(&mut self, now: Instant, max_age: Duration) {
        while let Some(oldest) = self.order.front() {
            let expired = self
                .entries
                .get(oldest)
                .is_none_or(|e| now.saturating_duration_since(e.stored_at) > max_age);
            if !expired {
                return;
            }
            let oldest = oldest.clone();
            self.remove(&oldest);
        }
    }

    fn oldest_of(&self, owner: Owner) -> Option<String> {
        self.order
            .iter()
            .find(|id| self.entries.get(*id).is_some_and(|e| e.owner == owner))
            .cloned()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_bounds_count_memory_not_the_text() {
        let zeros = Value::Array(vec![Value::from(0); 1000]);
        assert_eq!(serde_json::to_vec(&zeros).unwrap().len(), 2001);
        assert!(held_bytes(&zeros) >= 1000 * std::mem::size_of::<Value>());
        let object = serde_json::json!({"type": "message", "text": "hello"});
        assert_eq!(
            held_bytes(&object),
            3 * std::mem::size_of::<Value>()
                + 2 * OBJECT_ENTRY_OVERHEAD
                + "type".len()
                + "message".len()
                + "text".len()
                + "hello".len()
        );
    }

    use super::*;
    use serde_json::json;

    fn response(text: &str) -> StoredResponse {
        StoredResponse {
            response: json!({"id": "r", "output": []}),
            input: vec![
                json!({"type": "message", "id": format!("in_{text}"), "role": "user", "content": text}),
            ],
            output: vec![
                json!({"type": "message", "id": format!("out_{text}"), "role": "assistant", "content": text}),
            ],
        }
    }

    fn limits(total: usize, per_owner: usize, count: usize) -> StoreLimits {
        StoreLimits {
            total_bytes: total,
            bytes_per_owner: per_owner,
            count,
            max_age: Duration::from_secs(60),
        }
    }

    #[test]
    fn owners_see_only_their_own_responses_and_items() {
        let store = ResponseStore::new(StoreLimits::default());
        store.insert(Some(1000), "resp_a", response("a")).unwrap();
        assert!(store.get(Some(1000), "resp_a").is_some());
        assert!(store.get(Some(1001), "resp_a").is_none());
        assert!(store.get(None, "resp_a").is_none());
        assert_eq!(store.item(Some(1000), "out_a").unwrap()["content"], "a");
        assert!(store.item(Some(1001), "out_a").is_none());
        let conversation = store.get(Some(1000), "resp_a").unwrap().conversation();
        assert_eq!(conversation.len(), 2);
        assert_eq!(conversation[0]["id"], "in_a");
    }

    #[test]
    fn count_total_and_per_owner_bounds_evict_the_oldest() {
        let one = response("x").bytes();
        let store = ResponseStore::new(limits(one * 100, one * 100, 3));
        for id in ["r1", "r2", "r3", "r4"] {
            store.insert(Some(1), id, response("x")).unwrap();
        }
        assert!(store.get(Some(1), "r1").is_none());
        assert!(store.get(Some(1), "r4").is_some());
        assert_eq!(store.usage().0, 3);

        // One owner's share: their own oldest go, another owner's stay.
        let store = ResponseStore::new(limits(one * 100, one * 2, 100));
        store.insert(Some(2), "other", response("x")).unwrap();
        for id in ["r1", "r2", "r3"] {
            store.insert(Some(1), id, response("x")).unwrap();
        }
        assert!(store.get(Some(1), "r1").is_none());
        assert!(store.get(Some(1), "r3").is_some());
        assert!(store.get(Some(2), "other").is_some());

        // The total: the oldest of anyone goes.
        let store = ResponseStore::new(limits(one * 2, one * 2, 100));
        store.insert(Some(2), "other", response("x")).unwrap();
        store.insert(Some(1), "r1", response("x")).unwrap();
        store.insert(Some(1), "r2", response("x")).unwrap();
        assert!(store.get(Some(2), "other").is_none());
        assert_eq!(store.usage(), (2, one * 2));

        // Too large on its own: refused, nothing evicted.
        assert_eq!(
            store.insert(Some(1), "big", response(&"y".repeat(one * 2))),
            Err(NotStored::TooLarge {
                bytes: response(&"y".repeat(one * 2)).bytes()
            })
        );
        assert_eq!(store.usage().0, 2);
    }

    #[test]
    fn responses_expire_and_their_items_with_them() {
        let store = ResponseStore::new(limits(1 << 20, 1 << 20, 100));
        let start = Instant::now();
        store
            .insert_at(Some(1), "old", response("o"), start)
            .unwrap();
        assert!(store
            .get_at(Some(1), "old", start + Duration::from_secs(59))
            .is_some());
        assert!(store
            .get_at(Some(1), "old", start + Duration::from_secs(61))
            .is_none());
        assert!(store.item(Some(1), "out_o").is_none());
        assert_eq!(store.usage(), (0, 0));
    }

    #[test]
    fn replacing_an_id_keeps_the_accounting_exact() {
        let store = ResponseStore::new(StoreLimits::default());
        store.insert(Some(1), "r", response("a")).unwrap();
        store.insert(Some(1), "r", response("b")).unwrap();
        assert_eq!(store.usage(), (1, response("b").bytes()));
        assert!(store.item(Some(1), "out_a").is_none());
        assert!(store.item(Some(1), "out_b").is_some());
    }
}
