//! Transactions guarded by mod revisions (compare-and-swap on several
//! keys at once), for the registry and the CA rotation on etcd.

use super::etcd::EtcdStore;
use super::StoreError;
use xds_proto::etcd::{self as pb, compare, request_op};

/// One write of a guarded transaction; keys are below the store's prefix.
#[derive(Debug, Clone)]
pub enum TxnOp {
    /// `lease` 0: none.
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    Delete {
        key: String,
    },
}

impl EtcdStore {
    /// Applies `ops` if every `(key, mod revision)` in `expect` still holds
    /// (0: the key does not exist). Some(the new revision), or None when
    /// another writer changed one of them first.
    pub async fn guarded_txn(
        &self,
        expect: &[(String, i64)],
        ops: &[TxnOp],
    ) -> Result<Option<i64>, StoreError> {
        let compare = expect
            .iter()
            .map(|(k, rev)| pb::Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Mod as i32,
                key: self.key(k),
                target_union: Some(compare::TargetUnion::ModRevision(*rev)),
                ..Default::default()
            })
            .collect();
        let success = ops
            .iter()
            .map(|op| pb::RequestOp {
                request: Some(match op {
                    TxnOp::Put { key, value, lease } => {
                        request_op::Request::RequestPut(pb::PutRequest {
                            key: self.key(key),
                            value: value.clone(),
                            lease: *lease,
                            ..Default::default()
                        })
                    }
                    TxnOp::Delete { key } => {
                        request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                            key: self.key(key),
                            ..Default::default()
                        })
                    }
                }),
            })
            .collect();
        let txn = pb::TxnRequest {
            compare,
            success,
            failure: vec![],
        };
        let r = self.call(|ch| self.txn(ch, txn.clone())).await?;
        Ok(r.succeeded
            .then(|| r.header.map(|h| h.revision).unwrap_or(0)))
    }
}
