import numpy as np

from vprkit.index.expansion import alpha_query_expansion, database_augment


def _unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_alpha_qe_matches_hand_computation():
    db = _unit([[1, 0], [0.6, 0.8], [0, 1]])
    q = _unit([[0.8, 0.6]])
    # sims to db: 0.8, 0.96, 0.6 -> top-2 are db[1] (0.96) and db[0] (0.8); weights sim**3
    expected = q[0] + 0.96 ** 3 * db[1] + 0.8 ** 3 * db[0]
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(alpha_query_expansion(q, db, k=2, alpha=3.0)[0], expected, rtol=1e-5)


def test_dba_never_uses_the_descriptor_itself_and_clips_negative_similarities():
    db = _unit([[1, 0], [0, 1], [-1, 0.01]])
    out = database_augment(db, k=1, alpha=1.0)
    # db[0]'s nearest other is db[1] (sim 0 -> weight 0): unchanged; db[2]'s nearest other is db[1] (sim ~0.01)
    np.testing.assert_allclose(out[0], db[0], atol=1e-6)
    w = float(db[2] @ db[1])
    expected = db[2] + w * db[1]
    np.testing.assert_allclose(out[2], expected / np.linalg.norm(expected), rtol=1e-5)


def test_k_zero_is_identity():
    db = _unit(np.random.default_rng(0).normal(size=(5, 4)))
    np.testing.assert_array_equal(database_augment(db, k=0), db)
