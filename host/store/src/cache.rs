//! A small write-through cache of accounts and calls, the two records every API request and every
//! status poll reads. Every write of those records goes through the store, which refreshes the
//! cached copy with the row the write returned, so a read never sees an older row than the last
//! write of this process.
//!
//! Architecture invariant: this assumes the process is the database's only writer, which holds
//! for SQLite. A multi-node backend must invalidate it on other nodes' writes or switch it off.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::{Account, Call, IncomingNumber};

/// Calls kept; the oldest inserted go first (a status poll keeps touching a live call's row by
/// way of its writes, so insertion order is close enough to recency).
const CALLS: usize = 10_000;
const ACCOUNTS: usize = 10_000;
const NUMBERS: usize = 10_000;

#[derive(Debug, Default)]
pub struct Cache {
    calls: Mutex<Bounded<Arc<Call>>>,
    accounts: Mutex<Bounded<Arc<Account>>>,
    /// Numbers by phone number, for routing inbound calls. Filled by reads only; every write
    /// of a number bumps `numbers_written`, and a read that raced a write does not fill it.
    numbers: Mutex<Bounded<Arc<IncomingNumber>>>,
    numbers_written: AtomicU64,
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
        lock(&self.calls).put(&call.sid, Arc::new(call.clone()), CALLS);
    }

    /// After a read: cache the row only if no write has put a (newer) one meanwhile.
    pub fn offer_call(&self, call: &Call) {
        let mut calls = lock(&self.calls);
        if calls.get(&call.sid).is_none() {
            calls.put(&call.sid, Arc::new(call.clone()), CALLS);
        }
    }

    pub fn forget_call(&self, sid: &str) {
        lock(&self.calls).forget(sid);
    }

    pub fn account(&self, sid: &str) -> Option<Arc<Account>> {
        lock(&self.accounts).get(sid)
    }

    pub fn put_account(&self, account: &Account) {
        lock(&self.accounts).put(&account.sid, Arc::new(account.clone()), ACCOUNTS);
    }

    pub fn offer_account(&self, account: &Account) {
        let mut accounts = lock(&self.accounts);
        if accounts.get(&account.sid).is_none() {
            accounts.put(&account.sid, Arc::new(account.clone()), ACCOUNTS);
        }
    }

    pub fn forget_account(&self, sid: &str) {
        lock(&self.accounts).forget(sid);
    }

    pub fn number(&self, phone: &str) -> Option<Arc<IncomingNumber>> {
        lock(&self.numbers).get(phone)
    }

    /// Taken before a read of a number: pass it to [`Cache::offer_number`].
    pub fn numbers_version(&self) -> u64 {
        self.numbers_written.load(Ordering::Acquire)
    }

    /// After a read begun at `version`: cache the row unless a number was written since.
    pub fn offer_number(&self, number: &IncomingNumber, version: u64) {
        let mut numbers = lock(&self.numbers);
        if self.numbers_written.load(Ordering::Acquire) == version {
            numbers.put(&number.phone_number, Arc::new(number.clone()), NUMBERS);
        }
    }

    /// Before and after any write of a number (create, update, delete): drops the cached rows.
    pub fn numbers_changed(&self) {
        let mut numbers = lock(&self.numbers);
        self.numbers_written.fetch_add(1, Ordering::AcqRel);
        *numbers = Bounded::default();
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
