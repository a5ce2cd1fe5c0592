//! The simulator's disk model against the contract the replica core relies on: the suite
//! of `tern_core::storage_contract`, which the storage engine passes too, in every log
//! format (crates/storage/tests/conformance.rs). A case only one of them fails is a rule
//! on which the simulator does not answer as the engine does.

use tern_core::storage_contract::{assert_conforms, Harness};
use tern_sim::disk::{encode, SimDisk};

struct Model;

impl Harness for Model {
    type Storage = SimDisk;

    fn create(&mut self) -> SimDisk {
        SimDisk::new()
    }

    /// What a crash leaves: the durable state, its database rebuilt from the log.
    fn reopen(&mut self, mut disk: SimDisk) -> SimDisk {
        disk.recover();
        disk
    }

    /// Each write gets a key of its own (the suite's numbers stay below 256), so the
    /// database shows every write rather than the last one per key.
    fn write(&self, number: u64) -> Vec<u8> {
        encode(number, u8::try_from(number).expect("the suite numbers writes below 256"))
    }

    fn writes_reflected(&self, disk: &SimDisk) -> Vec<u64> {
        let mut writes: Vec<u64> = (0..=u8::MAX).filter_map(|key| disk.read(key)).map(|(write_id, _)| write_id).collect();
        writes.sort_unstable();
        writes
    }
}

#[test]
fn the_disk_model_conforms() {
    assert_conforms(
        &mut Model,
        &[(
            "epoch_starts_describe_only_the_retained_log",
            "the model keeps every entry through compaction and reports epoch starts from index 1 ([(1, 1), (2, 6)]); \
                 the engine reports the retained log only ([(2, 8)]), so the model's replica knows the epochs of compacted \
                 indexes where the engine's takes them to match any leader's",
        )],
    );
}
