//! In-run de-duplication of event ids.

use crate::mapping::MappedEvent;
use std::collections::HashMap;

/// Event ids queued in this run. A row can be read twice in one run: changed after its first
/// reading, it moves further along the cursor and a later page returns it again, before its
/// first event is in the ledger (still in flight, or refused by Meta). That second reading
/// must be neither sent again nor refused as a duplicate; only another row repeating a
/// model's own `event_id` is a duplicate.
///
/// Ids of the last batches are kept exactly (two generations, rotated every
/// `batches_per_generation` batches, which covers every batch not yet committed), and every
/// id of the run goes into a Bloom filter ([`IdFilter`]) that grows with the run, 4 MiB per
/// 1.33 million ids, so that its false-positive rate stays at a few dozen per million new ids
/// however long the run is (a single 4 MiB filter mistook 6% of new ids for taken ones by
/// five million). Each false positive costs a ledger lookup, batched per chunk and awaited in the
/// batching loop. An id the filter may have seen but that is not recent is settled by the
/// ledger (`suspects` and `take`'s `older` argument); a false positive is then found new and
/// sent.
pub(super) struct TakenIds {
    pub(super) model_maps_event_id: bool,
    pub(super) bloom: IdFilter,
    pub(super) current: Generation,
    pub(super) previous: Generation,
    pub(super) batches_in_current: u64,
    pub(super) batches_per_generation: u64,
}

/// Derived ids (32 hex digits) as numbers, other ids as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum IdKey {
    Derived(u128),
    Other(String),
}

/// A derived id is already a uniform hash (SHA-256 bits): its bits are the map's hash, with
/// no SipHash pass per lookup (two lookups per event of a backfill). Other ids go through
/// XXH3 once.
impl std::hash::Hash for IdKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(match self {
            IdKey::Derived(n) => *n as u64 ^ (*n >> 64) as u64,
            IdKey::Other(s) => xxhash_rust::xxh3::xxh3_64(s.as_bytes()),
        })
    }
}

/// The hasher of [`IdKey`] maps: takes the one `u64` the key writes.
#[derive(Default)]
pub(super) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    /// A derived id, already uniform: its halves folded, as [`IdKey`] hashes it.
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64 ^ (n >> 64) as u64;
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
}

pub(super) type IdMap = HashMap<IdKey, Reading, std::hash::BuildHasherDefault<IdHasher>>;

/// The ids taken in a stretch of batches. Derived ids (the usual case) are kept as a number
/// and the event's hash, 32 bytes an entry instead of 64: a generation holds tens of
/// thousands of them.
#[derive(Default)]
pub(super) struct Generation {
    derived: HashMap<u128, u64, std::hash::BuildHasherDefault<IdHasher>>,
    other: IdMap,
}

impl Generation {
    fn get(&self, key: &IdKey) -> Option<(Option<&[String]>, u64)> {
        match key {
            IdKey::Derived(n) => self.derived.get(n).map(|&hash| (None, hash)),
            IdKey::Other(_) => self.other.get(key).map(|r| (r.key.as_deref(), r.hash)),
        }
    }

    fn insert(&mut self, key: IdKey, row_key: &[String], hash: u64) {
        match key {
            IdKey::Derived(n) => {
                self.derived.insert(n, hash);
            }
            IdKey::Other(_) => {
                let reading = Reading {
                    key: Some(row_key.to_vec()),
                    hash,
                };
                self.other.insert(key, reading);
            }
        }
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.derived.is_empty() && self.other.is_empty()
    }

    fn clear(&mut self) {
        self.derived.clear();
        self.other.clear();
    }
}

#[derive(Debug, Clone)]
pub(super) struct Reading {
    /// The row that took the id (own event ids only; derived ids embed their row).
    pub(super) key: Option<Vec<String>>,
    /// A hash of the event as first read.
    pub(super) hash: u64,
}

/// What the ledger says of an id the run may have taken earlier: its row and fingerprint.
pub(super) type Older = HashMap<String, (Vec<String>, String)>;

pub(super) enum Taken {
    New,
    /// The row that took the id, read again; `changed` when its event differs.
    SameRow {
        changed: bool,
    },
    OtherRow,
}

/// Bits of one layer of the filter (4 MiB).
pub(super) const BLOOM_BITS: usize = 1 << 25;
/// Probes per id, all in one 512-bit block: twelve take the 16 bits that pick the block and
/// 108 more of the id's 128-bit hash, none shared.
pub(super) const BLOOM_PROBES: u64 = 12;
/// Ids one layer takes before the next is started: about 25 bits per id. Measured on
/// uniform ids, a layer of this load mistakes about 27 new ids per million for taken ones
/// (2 per million at 1M ids; 8 probes gave 71 and 11).
pub(super) const IDS_PER_LAYER: usize = 1_330_000;

/// Every id the run took, as blocked Bloom filters of [`BLOOM_BITS`] bits ("layers"), each
/// holding at most [`IDS_PER_LAYER`] ids: ids go into the newest layer, and an id may have
/// been taken if any layer holds its bits. A filter cannot grow in place (its ids are not
/// kept), so it grows by layers, as a scalable Bloom filter does (Almeida et al., 2007): a
/// new id then risks one layer's false-positive rate per layer filled, instead of the
/// rate of one filter loaded ever more. A layer is allocated on first use, so a short run
/// holds no more than one.
#[derive(Default)]
pub(super) struct IdFilter {
    pub(super) layers: Vec<Vec<u64>>,
    /// Ids inserted into the newest layer.
    pub(super) in_newest: usize,
}

impl IdFilter {
    pub(super) fn may_contain(&self, key: &IdKey) -> bool {
        if self.layers.is_empty() {
            return false;
        }
        let bits: [usize; BLOOM_PROBES as usize] = TakenIds::bloom_bits(key);
        // The layers hold different ids, so the same bits of the id's hash serve them all.
        self.layers.iter().any(|layer| {
            bits.iter()
                .all(|&bit| layer[bit / 64] & (1 << (bit % 64)) != 0)
        })
    }

    pub(super) fn insert(&mut self, key: &IdKey) {
        if self.layers.is_empty() || self.in_newest >= IDS_PER_LAYER {
            self.layers.push(vec![0u64; BLOOM_BITS / 64]);
            self.in_newest = 0;
        }
        self.in_newest += 1;
        let Some(layer) = self.layers.last_mut() else {
            unreachable!("a layer was just added")
        };
        for bit in TakenIds::bloom_bits(key) {
            layer[bit / 64] |= 1 << (bit % 64);
        }
    }
}
/// Batches not yet committed, beyond those in flight: the settle queue, the job being
/// committed, the batch being cut, and a margin.
pub(super) const UNCOMMITTED_BEYOND_IN_FLIGHT: u64 = 8;

/// A derived id (32 lowercase hex digits, as `derive_event_id` writes them) as its number.
/// Every digit is checked without branching on it: about 3 ns an id, where
/// `u128::from_str_radix` (a branch and an overflow check a digit) took 31 ns and showed in
/// profiles of the batching loop.
fn derived_id_number(id: &str) -> Option<u128> {
    let digits: &[u8; 32] = id.as_bytes().try_into().ok()?;
    let mut n = 0u128;
    let mut bad = 0u8;
    for &c in digits {
        let decimal = c.wrapping_sub(b'0');
        let letter = c.wrapping_sub(b'a');
        let is_decimal = decimal < 10;
        let value = if is_decimal {
            decimal
        } else {
            letter.wrapping_add(10)
        };
        bad |= u8::from(!is_decimal && letter >= 6);
        n = n << 4 | u128::from(value & 0x0f);
    }
    (bad == 0).then_some(n)
}

impl TakenIds {
    /// `max_in_flight`: the most batches sent and not yet settled (with a request in flight or
    /// waiting for their ledger write). An id stays recent for at least one generation after
    /// its batch is cut, so a generation spans every batch that can be uncommitted at once.
    pub(super) fn new(model_maps_event_id: bool, max_in_flight: usize) -> TakenIds {
        TakenIds {
            model_maps_event_id,
            bloom: IdFilter::default(),
            current: Generation::default(),
            previous: Generation::default(),
            batches_in_current: 0,
            batches_per_generation: max_in_flight as u64 + UNCOMMITTED_BEYOND_IN_FLIGHT,
        }
    }

    pub(super) fn id_key(&self, id: &str) -> IdKey {
        if !self.model_maps_event_id {
            if let Some(n) = derived_id_number(id) {
                return IdKey::Derived(n);
            }
        }
        IdKey::Other(id.to_string())
    }

    pub(super) fn id_hash(key: &IdKey) -> u128 {
        match key {
            IdKey::Derived(n) => *n,
            IdKey::Other(s) => xxhash_rust::xxh3::xxh3_128(s.as_bytes()),
        }
    }

    /// The filter's bits for an id: all in one 512-bit block (one cache line), so a check
    /// or an insert costs one memory access. The hash's low 16 bits pick the block and each
    /// probe takes its own next 9 bits, so no two probes of an id are derived from one
    /// another (probes computed as multiples of one number fall into a few hundred
    /// patterns, and ids sharing a block then matched each other's bits far more often).
    pub(super) fn bloom_bits(key: &IdKey) -> [usize; BLOOM_PROBES as usize] {
        const BLOCKS_LOG2: u32 = (BLOOM_BITS / 512).trailing_zeros();
        let h = Self::id_hash(key);
        let block = (h as usize & (BLOOM_BITS / 512 - 1)) * 512;
        std::array::from_fn(|i| block + ((h >> (BLOCKS_LOG2 + 9 * i as u32)) as usize & 511))
    }

    pub(super) fn bloom_may_contain(&self, key: &IdKey) -> bool {
        self.bloom.may_contain(key)
    }

    pub(super) fn bloom_insert(&mut self, key: &IdKey) {
        self.bloom.insert(key);
    }

    /// The row key (own event ids only) and the event's hash of a recently taken id.
    pub(super) fn recent(&self, key: &IdKey) -> Option<(Option<&[String]>, u64)> {
        self.current.get(key).or_else(|| self.previous.get(key))
    }

    /// Ids of these events that this run may have taken before, not among the recent ones:
    /// the caller asks the ledger about them.
    pub(super) fn suspects<'a>(
        &self,
        events: impl Iterator<Item = &'a MappedEvent>,
    ) -> Vec<String> {
        events
            .filter(|e| {
                let k = self.id_key(&e.event_id);
                self.recent(&k).is_none() && self.bloom_may_contain(&k)
            })
            .map(|e| e.event_id.clone())
            .collect()
    }

    /// Called when a batch is cut: rotates the exact generations.
    pub(super) fn batch_cut(&mut self) {
        self.batches_in_current += 1;
        if self.batches_in_current >= self.batches_per_generation {
            // Swapped and cleared, not reallocated: the maps keep their capacity.
            std::mem::swap(&mut self.previous, &mut self.current);
            self.current.clear();
            self.batches_in_current = 0;
        }
    }

    pub(super) fn take(&mut self, event: &MappedEvent, key: &[String], older: &Older) -> Taken {
        let hash = event.digest as u64;
        let id = self.id_key(&event.event_id);
        if let Some((first_key, first_hash)) = self.recent(&id) {
            return match first_key {
                Some(k) if k != key => Taken::OtherRow,
                _ => Taken::SameRow {
                    changed: first_hash != hash,
                },
            };
        }
        if let Some((row_key, fingerprint)) = older.get(&event.event_id) {
            return if row_key.as_slice() == key {
                Taken::SameRow {
                    changed: *fingerprint != event.fingerprint(),
                }
            } else {
                Taken::OtherRow
            };
        }
        self.bloom_insert(&id);
        self.current.insert(id, key, hash);
        Taken::New
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The id's number is the one `u128::from_str_radix` reads, for every derived id; any
    /// other text (uppercase, a sign, a non-hex digit, another length) is not a derived id.
    #[test]
    fn derived_ids_read_as_their_number() {
        for i in 0..2000u32 {
            let id = crate::mapping::derive_event_id("m", &[i.to_string()], "Lead");
            assert_eq!(
                derived_id_number(&id),
                Some(u128::from_str_radix(&id, 16).expect("hex")),
                "{id}"
            );
        }
        assert_eq!(derived_id_number(&"f".repeat(32)), Some(u128::MAX));
        assert_eq!(derived_id_number(&"0".repeat(32)), Some(0));
        for other in [
            "0123456789ABCDEF0123456789abcdef".to_string(),
            format!("+{}", "1".repeat(31)),
            format!("{}g", "1".repeat(31)),
            format!("{}/", "1".repeat(31)),
            format!("{}:", "1".repeat(31)),
            format!("{}`", "1".repeat(31)),
            "1".repeat(31),
            "1".repeat(33),
            String::new(),
        ] {
            assert_eq!(derived_id_number(&other), None, "{other}");
        }
    }

    fn event(id: &str, json: &str) -> MappedEvent {
        MappedEvent::new(id.into(), "Lead".into(), 1, json.into(), Default::default())
    }

    fn derived(i: u32) -> String {
        crate::mapping::derive_event_id("m", &[i.to_string()], "Lead")
    }

    /// Ids spread like derived ones (SHA-256 bits), from SplitMix64.
    fn random_ids(seed: u64) -> impl FnMut() -> IdKey {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        move || IdKey::Derived(u128::from(next()) << 64 | u128::from(next()))
    }

    /// Every false positive of the filter is a ledger lookup in the batching loop. At a
    /// million ids a sound 4 MiB filter gives a few; probes that were multiples of one
    /// number gave several hundred.
    #[test]
    fn the_filter_rarely_mistakes_a_new_id_at_a_million() {
        let mut t = TakenIds::new(false, 4);
        let mut key = random_ids(0x9e37_79b9_7f4a_7c15);
        for _ in 0..1_000_000 {
            let k = key();
            t.bloom_insert(&k);
        }
        let false_positives = (0..1_000_000)
            .filter(|_| t.bloom_may_contain(&key()))
            .count();
        assert!(
            false_positives < 50,
            "{false_positives} false positives in a million"
        );
    }

    /// A long run pays no more per new id than a short one: at five million ids one 4 MiB
    /// filter mistook 6% of new ids for taken ones, each a ledger lookup.
    #[test]
    fn the_filter_mistakes_new_ids_as_rarely_at_five_million_as_at_one() {
        let mut filter = IdFilter::default();
        let mut key = random_ids(42);
        let mut false_positives_after = |filter: &mut IdFilter, ids: usize| {
            for _ in 0..ids {
                filter.insert(&key());
            }
            (0..200_000).filter(|_| filter.may_contain(&key())).count()
        };
        let at_one = false_positives_after(&mut filter, 1_000_000);
        let at_five = false_positives_after(&mut filter, 4_000_000);
        assert!(at_one < 10, "{at_one} of 200 000 new ids mistaken at 1M");
        // Four layers risk four times one full layer's rate at most.
        assert!(at_five < 50, "{at_five} of 200 000 new ids mistaken at 5M");
        assert_eq!(filter.layers.len(), 4, "4 MiB per 1.33 million ids");
    }

    #[test]
    fn every_taken_id_is_found_in_whichever_layer_holds_it() {
        let mut filter = IdFilter::default();
        let mut key = random_ids(7);
        let ids: Vec<IdKey> = (0..IDS_PER_LAYER + 1000).map(|_| key()).collect();
        for id in &ids {
            filter.insert(id);
        }
        assert_eq!(filter.layers.len(), 2);
        assert!(ids.iter().all(|id| filter.may_contain(id)));
    }

    #[test]
    fn a_row_read_again_soon_is_the_same_row() {
        let mut t = TakenIds::new(false, 4);
        let none = Older::new();
        let id = derived(1);
        assert!(matches!(
            t.take(&event(&id, "{a}"), &["1".into()], &none),
            Taken::New
        ));
        assert!(matches!(
            t.take(&event(&id, "{b}"), &["1".into()], &none),
            Taken::SameRow { changed: true }
        ));
    }

    #[test]
    fn an_old_id_is_settled_by_the_ledger_not_kept_in_memory() {
        let mut t = TakenIds::new(false, 4);
        let none = Older::new();
        let id = derived(7);
        assert!(matches!(
            t.take(&event(&id, "{a}"), &["7".into()], &none),
            Taken::New
        ));
        for _ in 0..(2 * t.batches_per_generation) {
            t.batch_cut();
        }
        assert!(t.current.is_empty() && t.previous.is_empty());
        // The filter still remembers it, so the ledger is asked.
        assert_eq!(t.suspects([event(&id, "{a}")].iter()), vec![id.clone()]);
        let e = event(&id, "{a}");
        let mut older = Older::new();
        older.insert(id.clone(), (vec!["7".into()], e.fingerprint()));
        assert!(matches!(
            t.take(&e, &["7".into()], &older),
            Taken::SameRow { changed: false }
        ));
    }

    #[test]
    fn another_row_with_the_same_own_event_id_is_a_duplicate() {
        let mut t = TakenIds::new(true, 4);
        let none = Older::new();
        assert!(matches!(
            t.take(&event("order-9", "{a}"), &["1".into()], &none),
            Taken::New
        ));
        assert!(matches!(
            t.take(&event("order-9", "{a}"), &["2".into()], &none),
            Taken::OtherRow
        ));
    }

    #[test]
    fn the_filter_rarely_suspects_a_new_id() {
        let mut t = TakenIds::new(false, 4);
        let none = Older::new();
        for i in 0..200_000 {
            t.take(&event(&derived(i), "{}"), &[i.to_string()], &none);
        }
        for _ in 0..(2 * t.batches_per_generation) {
            t.batch_cut();
        }
        let fresh: Vec<MappedEvent> = (200_000..300_000)
            .map(|i| event(&derived(i), "{}"))
            .collect();
        let false_hits = t.suspects(fresh.iter()).len();
        assert!(false_hits < 100, "{false_hits} of 100000 new ids suspected");
        let old: Vec<MappedEvent> = (0..1000).map(|i| event(&derived(i), "{}")).collect();
        assert_eq!(
            t.suspects(old.iter()).len(),
            1000,
            "no taken id may be missed"
        );
    }
}
