//! A small write-through cache of accounts and calls, the two records every API request and every
//! status poll reads. Every write of those records goes through the store, which refreshes the
//! cached copy with the row the write returned, so a read never sees an older row than the last
//! write of this process. Records read on every call and written rarely (numbers by phone, an
//! account's plugin bindings) are kept in [`ReadMostly`] caches, filled by reads and emptied by
//! any write.
//!
//! Architecture invariant: this assumes the process is the database's only writer, which holds
//! for SQLite ([`Cache::local`]). On PostgreSQL several nodes write, so the store runs with
//! [`Cache::off`]: nothing is kept, every read goes to the database.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::{Account, Binding, Call, IncomingNumber};

/// Calls kept; the oldest inserted go first (a status poll keeps touching a live call's row by
/// way of its writes, so insertion order is close enough to recency).
const CALLS: usize = 10_000;
const ACCOUNTS: usize = 10_000;
const NUMBERS: usize = 10_000;
const BINDINGS: usize = 10_000;

#[derive(Debug)]
pub struct Cache {
    calls: Mutex<Bounded<Arc<Call>>>,
    accounts: Mutex<Bounded<Arc<Account>>>,
    /// Numbers by phone number, for routing inbound calls.
    pub numbers: ReadMostly<IncomingNumber>,
    /// Every plugin binding of an account, by account, for pinning each new call.
    pub bindings: ReadMostly<Vec<Binding>>,
    calls_cap: usize,
    accounts_cap: usize,
}

impl Cache {
    /// For a database this process alone writes.
    pub fn local() -> Cache {
        Cache::with_caps(CALLS, ACCOUNTS, NUMBERS, BINDINGS)
    }

    /// For a database other nodes write too: keeps nothing.
    pub fn off() -> Cache {
        Cache::with_caps(0, 0, 0, 0)
    }

    fn with_caps(calls: usize, accounts: usize, numbers: usize, bindings: usize) -> Cache {
        Cache {
            calls: Mutex::default(),
            accounts: Mutex::default(),
            numbers: ReadMostly::with_cap(numbers),
            bindings: ReadMostly::with_cap(bindings),
            calls_cap: calls,
            accounts_cap: accounts,
        }
    }
}

/// Records read on every call and written rarely. Filled by reads only: a read takes the
/// [`ReadMostly::version`] before it queries, and [`ReadMostly::offer`]s its row with it; every
/// write calls [`ReadMostly::changed`] (before and after), which empties the cache and bumps
/// the version, so a read that raced a write does not fill it with an older row.
#[derive(Debug)]
pub struct ReadMostly<T> {
    rows: Mutex<Bounded<Arc<T>>>,
    written: AtomicU64,
    cap: usize,
}

impl<T> ReadMostly<T> {
    fn with_cap(cap: usize) -> Self {
        ReadMostly {
            rows: Mutex::new(Bounded::default()),
            written: AtomicU64::new(0),
            cap,
        }
    }

    pub fn get(&self, key: &str) -> Option<Arc<T>> {
        lock(&self.rows).get(key)
    }

    /// Taken before a read: pass it to [`ReadMostly::offer`].
    pub fn version(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// After a read begun at `version`: cache the row unless something was written since.
    pub fn offer(&self, key: &str, row: Arc<T>, version: u64) {
        let mut rows = lock(&self.rows);
        if self.written.load(Ordering::Acquire) == version {
            rows.put(key, row, self.cap);
        }
    }

    /// Before and after any write (create, update, delete): drops the cached rows.
    pub fn changed(&self) {
        let mut rows = lock(&self.rows);
        self.written.fetch_add(1, Ordering::AcqRel);
        *rows = Bounded::default();
    }
}

#[derive(Debug)]
struct Bounded<T> {
    map: HashMap<String, T>,
    order: VecDeque<String>,
}

impl<T> Default for Bounded<T> {
    fn default() -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<T: Clone> Bounded<T> {
    fn get(&self, key: &str) -> Option<T> {
        self.map.get(key).cloned()
    }

    fn put(&mut self, key: &str, value: T, cap: usize) {
        if cap == 0 {
            return;
        }
        if self.map.insert(key.to_owned(), value).is_none() {
            self.order.push_back(key.to_owned());
        }
        while self.map.len() > cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    fn forget(&mut self, key: &str) {
        // its place in `order` goes when it reaches the front
        self.map.remove(key);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cache {
    pub fn call(&self, sid: &str) -> Option<Arc<Call>> {
        lock(&self.calls).get(sid)
    }

    /// After a write: the row the write produced replaces whatever was cached. Writers call this
    /// while they still hold the (single) writer connection, so puts happen in commit order.
    pub fn put_call(&self, call: &Call) {
        lock(&self.calls).put(&call.sid, Arc::new(call.clone()), self.calls_cap);
    }

    /// After a read: cache the row only if no write has put a (newer) one meanwhile.
    pub fn offer_call(&self, call: &Call) {
        let mut calls = lock(&self.calls);
        if calls.get(&call.sid).is_none() {
            calls.put(&call.sid, Arc::new(call.clone()), self.calls_cap);
        }
    }

    pub fn forget_call(&self, sid: &str) {
        lock(&self.calls).forget(sid);
    }

    pub fn account(&self, sid: &str) -> Option<Arc<Account>> {
        lock(&self.accounts).get(sid)
    }

    pub fn put_account(&self, account: &Account) {
        lock(&self.accounts).put(&account.sid, Arc::new(account.clone()), self.accounts_cap);
    }

    pub fn offer_account(&self, account: &Account) {
        let mut accounts = lock(&self.accounts);
        if accounts.get(&account.sid).is_none() {
            accounts.put(&account.sid, Arc::new(account.clone()), self.accounts_cap);
        }
    }

    pub fn forget_account(&self, sid: &str) {
        lock(&self.accounts).forget(sid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_evicts_oldest_and_forgets() {
        let mut b = Bounded::default();
        for i in 0..5 {
            b.put(&i.to_string(), i, 3);
        }
        assert_eq!(
            (b.get("0"), b.get("1"), b.get("2"), b.get("4")),
            (None, None, Some(2), Some(4))
        );
        b.put("2", 22, 3);
        assert_eq!(b.get("2"), Some(22));
        b.forget("3");
        assert_eq!(b.get("3"), None);
        assert!(b.map.len() <= 3);
    }
}
