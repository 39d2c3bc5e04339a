//! SecAgg+ end to end: exact sums under dropouts, aborts, misbehaviour.

use cohort_privacy::secagg::{
    self, Advertisement, ClientId, ClientRound, EncryptedShares, Params, Reveal, SecAggError,
    ServerRound, Share, Simulation, decode_reveals, decode_shares, encode_reveals, encode_shares,
    neighbourhoods,
};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::collections::{BTreeMap, BTreeSet};

fn sim(clients: u32, neighbours: u32, threshold: f64, bits: u32) -> Simulation {
    Simulation {
        clients,
        input_len: 64,
        neighbours,
        threshold,
        bits,
        drop_after_advertise: vec![],
        drop_after_sharing: vec![],
        drop_after_masking: vec![],
        seed: 1,
    }
}

fn assert_exact(s: &Simulation) {
    let r = s.run();
    let sum = r
        .sum
        .unwrap_or_else(|e| panic!("{s:?} failed: {e}; client errors {:?}", r.client_errors));
    assert_eq!(sum, r.expected, "{s:?}");
    assert!(r.expected.iter().any(|&v| v != 0));
}

#[test]
fn exact_sum_without_dropouts() {
    assert_exact(&sim(8, 4, 0.6, 32));
    assert_exact(&sim(5, 10, 2.0 / 3.0, 16)); // complete graph
    assert_exact(&sim(2, 2, 1.0, 64)); // smallest round
    assert_exact(&sim(12, 3, 0.51, 48)); // odd k rounds up to 4
}

#[test]
fn exact_sum_with_dropouts_after_each_stage() {
    // k = 8 (sparse: not all 9 others); shares held by the 8 neighbours and
    // the client itself, t = 6, min_survivors = 6: any 3 missing holders are
    // tolerated.
    let base = sim(10, 8, 0.6, 32);
    let mut s = base.clone();
    s.drop_after_advertise = vec![3];
    assert_exact(&s);
    let mut s = base.clone();
    s.drop_after_sharing = vec![0, 7];
    assert_exact(&s);
    let mut s = base.clone();
    s.drop_after_masking = vec![2, 9];
    assert_exact(&s);
    let mut s = base.clone();
    s.drop_after_advertise = vec![5];
    s.drop_after_sharing = vec![1];
    s.drop_after_masking = vec![8];
    assert_exact(&s);
    let r = s.run();
    let (params, k) = r.params.unwrap();
    assert_eq!((params.share_threshold, params.min_survivors, k), (6, 6, 8));
    // Four dropouts in one neighbourhood are one too many.
    let mut s = base.clone();
    s.drop_after_masking = vec![0, 1, 2, 3];
    assert!(matches!(
        s.run().sum,
        Err(SecAggError::CannotReconstruct { .. })
    ));
}

#[test]
fn random_small_configurations() {
    let mut rng = ChaCha20Rng::seed_from_u64(2024);
    let mut ok = 0;
    for case in 0..60 {
        let clients = rng.random_range(3..=12u32);
        let neighbours = rng.random_range(2..=clients);
        let threshold = [0.51, 0.6, 2.0 / 3.0, 0.75, 1.0][rng.random_range(0..5)];
        let bits = [1, 8, 16, 31, 32, 33, 48, 63, 64][rng.random_range(0..9)];
        let mut pick = |max: u32| -> Vec<ClientId> {
            let m = rng.random_range(0..=max);
            (0..m).map(|_| rng.random_range(0..clients)).collect()
        };
        let no_drops = case % 4 == 0;
        let (a, b, c) = if no_drops {
            (vec![], vec![], vec![])
        } else {
            (pick(1), pick(2), pick(2))
        };
        let s = Simulation {
            clients,
            input_len: 1 + case,
            neighbours,
            threshold,
            bits,
            drop_after_advertise: a,
            drop_after_sharing: b,
            drop_after_masking: c,
            seed: case as u64,
        };
        let r = s.run();
        match r.sum {
            Ok(sum) => {
                assert_eq!(sum, r.expected, "{s:?}");
                ok += 1;
            }
            Err(SecAggError::TooFewSurvivors { .. } | SecAggError::CannotReconstruct { .. })
                if !no_drops => {}
            Err(e) => panic!("{s:?}: unexpected {e}"),
        }
    }
    assert!(ok >= 30, "only {ok} of 60 random rounds completed");
}

#[test]
fn client_ids_beyond_255() {
    // GF(256) Shamir would cap at 255 shares; x = id + 1 here goes to 300.
    let mut s = sim(300, 4, 0.75, 32);
    s.input_len = 4;
    s.drop_after_masking = vec![299, 150];
    s.drop_after_sharing = vec![256];
    assert_exact(&s);
}

#[test]
fn aborts_when_too_few_survive_each_stage() {
    // Advertised, then vanished: the others hold shares from only 4
    // neighbours and themselves (5 < t) and refuse to send a masked input.
    let mut s = sim(8, 7, 0.75, 32); // complete, t = 6 of 8 holders, min_survivors = 6
    s.drop_after_advertise = vec![0, 1, 2];
    let r = s.run();
    assert!(matches!(
        r.sum,
        Err(SecAggError::TooFewSurvivors { have: 0, need: 6 })
    ));
    assert!(r.client_errors.iter().all(|(_, e)| matches!(
        e,
        SecAggError::TooFewNeighbours {
            stage: "sharing",
            have: 5,
            need: 6
        }
    )));
    assert_eq!(r.client_errors.len(), 5);
    // Never advertised (too few adverts to share with) is covered by
    // `client_rejects_bad_adverts`.

    // Sharing: too few send masked inputs → clients refuse to unmask.
    let mut s = sim(8, 7, 0.75, 32);
    s.drop_after_sharing = vec![0, 1, 2];
    let r = s.run();
    assert!(matches!(
        r.sum,
        Err(SecAggError::TooFewSurvivors { have: 5, need: 6 })
    ));
    assert_eq!(r.client_errors.len(), 5);
    assert!(
        r.client_errors
            .iter()
            .all(|(_, e)| matches!(e, SecAggError::TooFewSurvivors { have: 5, need: 6 }))
    );

    // Masking: enough survivors, but too few of them answer the unmask
    // request to reconstruct the self masks.
    let mut s = sim(8, 7, 0.75, 32);
    s.drop_after_masking = vec![0, 1, 2];
    let r = s.run();
    assert!(matches!(r.sum, Err(SecAggError::CannotReconstruct { .. })));
}

/// A round driven by hand, for the misbehaviour tests.
struct Manual {
    session: Vec<u8>,
    params: Params,
    server: ServerRound,
    clients: Vec<ClientRound>,
    rng: ChaCha20Rng,
}

impl Manual {
    fn new(n: u32, k: u32, threshold: f64, session: &[u8], seed: u64) -> Self {
        let (params, k) = Params::from_fractions(n, k, threshold, 32).unwrap();
        let graph = neighbourhoods(n, k, &secagg::graph_seed(session));
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut server = ServerRound::try_new(session, params.clone(), graph.clone(), 16).unwrap();
        let mut clients = Vec::new();
        for (u, nbrs) in graph.into_iter().enumerate() {
            let (c, ad) =
                ClientRound::new(session, params.clone(), u as ClientId, nbrs, &mut rng).unwrap();
            server.advertised(u as ClientId, ad).unwrap();
            clients.push(c);
        }
        Self {
            session: session.to_vec(),
            params,
            server,
            clients,
            rng,
        }
    }

    fn share(&mut self) -> Vec<Vec<EncryptedShares>> {
        let mut batches = Vec::new();
        for (u, c) in self.clients.iter_mut().enumerate() {
            let adverts = self.server.adverts_for(u as ClientId);
            let batch = c.share_keys(&adverts, &mut self.rng).unwrap();
            self.server
                .shares_sent(u as ClientId, batch.clone())
                .unwrap();
            batches.push(batch);
        }
        batches
    }

    fn mask_all(&mut self, input: &[u64]) -> Vec<Vec<u64>> {
        let mut out = Vec::new();
        for (u, c) in self.clients.iter_mut().enumerate() {
            let y = c
                .mask(input, &self.server.shares_for(u as ClientId))
                .unwrap();
            self.server.masked_input(u as ClientId, y.clone()).unwrap();
            out.push(y);
        }
        out
    }
}

#[test]
fn client_refuses_unmask_below_threshold_and_answers_once() {
    let mut m = Manual::new(6, 5, 0.8, b"job/1/round/3", 7); // t = 4
    m.share();
    m.mask_all(&[1; 16]);
    let c = &mut m.clients[0];
    let few: BTreeSet<ClientId> = [0, 1, 2].into(); // 2 of my 5 neighbours
    assert!(matches!(
        c.unmask(&few),
        Err(SecAggError::TooFewSurvivors { have: 3, need: 5 })
    ));
    // Refused, and never answers again, even with a full survivor set.
    let all: BTreeSet<ClientId> = (0..6).collect();
    assert!(matches!(c.unmask(&all), Err(SecAggError::AlreadyUnmasked)));

    // A survivor set that is large enough overall but leaves me < t
    // neighbours (min_survivors ≤ t here only with a sparse graph): use
    // one client whose survivor set excludes itself as well.
    let c = &mut m.clients[1];
    assert!(matches!(
        c.unmask(&[0, 2, 3, 4, 5].into()),
        Err(SecAggError::NotASurvivor { client: 1 })
    ));

    // Second unmask after the survivor set changed: refused.
    let c = &mut m.clients[2];
    let reveals = c.unmask(&all).unwrap();
    assert_eq!(reveals.len(), 6, "five neighbours' and its own");
    assert!(
        reveals
            .iter()
            .all(|r| matches!(r, Reveal::SelfMaskSeed { .. }))
    );
    let changed: BTreeSet<ClientId> = [0, 1, 2, 3, 4].into();
    assert!(matches!(
        c.unmask(&changed),
        Err(SecAggError::AlreadyUnmasked)
    ));
}

#[test]
fn client_refuses_when_too_few_neighbours_survive() {
    // Sparse graph: 10 clients, k = 4 (5 share holders with the client
    // itself), t = 3, min_survivors = 6.
    let mut m = Manual::new(10, 4, 0.6, b"sparse", 9);
    assert_eq!(m.params.share_threshold, 3);
    m.share();
    m.mask_all(&[0; 16]);
    let graph = neighbourhoods(10, 4, &secagg::graph_seed(b"sparse"));
    // Survivors: me, one neighbour, and enough non-neighbours.
    let me = 0usize;
    let mut survivors: BTreeSet<ClientId> = [me as ClientId, graph[me][0]].into();
    for v in 0..10 {
        if survivors.len() < 7 && !graph[me].contains(&v) && v != me as ClientId {
            survivors.insert(v);
        }
    }
    assert!(matches!(
        m.clients[me].unmask(&survivors),
        Err(SecAggError::TooFewNeighbours {
            stage: "unmask",
            have: 2,
            need: 3
        })
    ));
}

#[test]
fn server_rejects_bad_reveals() {
    let mut m = Manual::new(5, 4, 0.6, b"reveals", 3); // complete, t = 3
    m.share();
    let y = m.mask_all(&[5; 16]);
    assert_eq!(y.len(), 5);
    let survivors = m.server.survivors();
    let honest = m.clients[0].unmask(&survivors).unwrap();
    let fake = |holder: ClientId| {
        let mut b = holder.to_le_bytes().to_vec();
        b.extend_from_slice(&[0u8; 64]);
        Share::from_bytes(&b).unwrap()
    };
    // Both kinds for one client.
    let mut both = honest.clone();
    both.push(Reveal::MaskKey {
        of: 1,
        share: fake(0),
    });
    assert!(matches!(
        m.server.reveal(0, both),
        Err(SecAggError::ConflictingReveal { from: 0, about: 1 })
    ));
    // The wrong kind: a mask key of a survivor.
    let wrong = vec![Reveal::MaskKey {
        of: 1,
        share: fake(0),
    }];
    assert!(matches!(
        m.server.reveal(0, wrong),
        Err(SecAggError::WrongRevealKind {
            from: 0,
            about: 1,
            ..
        })
    ));
    // Its own mask key, though it survived.
    let own = vec![Reveal::MaskKey {
        of: 0,
        share: fake(0),
    }];
    assert!(matches!(
        m.server.reveal(0, own),
        Err(SecAggError::WrongRevealKind {
            from: 0,
            about: 0,
            ..
        })
    ));
    // A share held by someone else.
    let stolen = vec![Reveal::SelfMaskSeed {
        of: 2,
        share: fake(1),
    }];
    assert!(matches!(
        m.server.reveal(0, stolen),
        Err(SecAggError::Malformed(_))
    ));
    // Rejected batches left nothing behind; the honest one is accepted once.
    m.server.reveal(0, honest.clone()).unwrap();
    assert!(matches!(
        m.server.reveal(0, honest),
        Err(SecAggError::Duplicate { client: 0, .. })
    ));
    assert!(matches!(
        m.server.reveal(9, vec![]),
        Err(SecAggError::UnknownClient { client: 9, n: 5 })
    ));
    for u in 1..5 {
        let r = m.clients[u].unmask(&survivors).unwrap();
        m.server.reveal(u as ClientId, r).unwrap();
    }
    assert_eq!(m.server.revealers().len(), 5);
    let sum = m.server.finish().unwrap();
    assert_eq!(sum, vec![25; 16]);
}

#[test]
fn reveal_from_non_survivor_is_rejected() {
    let mut m = Manual::new(5, 4, 0.6, b"nonsurvivor", 4);
    m.share();
    for u in 0..4 {
        let y = m.clients[u]
            .mask(&[1; 16], &m.server.shares_for(u as ClientId))
            .unwrap();
        m.server.masked_input(u as ClientId, y).unwrap();
    }
    let survivors = m.server.survivors();
    assert_eq!(survivors.len(), 4);
    // Client 4 shared but never sent a masked input; now it is too late.
    let late = m.clients[4]
        .mask(&[1; 16], &m.server.shares_for(4))
        .unwrap();
    assert!(matches!(
        m.server.masked_input(4, late),
        Err(SecAggError::WrongStage { .. })
    ));
    assert!(matches!(
        m.server.reveal(4, vec![]),
        Err(SecAggError::NotASurvivor { client: 4 })
    ));
    for u in 0..4 {
        let r = m.clients[u].unmask(&survivors).unwrap();
        // Client 4 dropped: everyone reveals its mask key share.
        assert!(r.iter().any(|r| matches!(r, Reveal::MaskKey { of: 4, .. })));
        m.server.reveal(u as ClientId, r).unwrap();
    }
    assert_eq!(m.server.finish().unwrap(), vec![4; 16]);
}

#[test]
fn tampered_ciphertext_names_the_sender() {
    let mut m = Manual::new(4, 3, 0.6, b"tamper", 5);
    m.share();
    let mut received = m.server.shares_for(0);
    let i = received.iter().position(|e| e.from == 2).unwrap();
    let last = received[i].ciphertext.len() - 1;
    received[i].ciphertext[last] ^= 0x01;
    assert!(matches!(
        m.clients[0].mask(&[0; 16], &received),
        Err(SecAggError::DecryptionFailed { from: 2 })
    ));
    // Misaddressed (claims another sender): also fails, naming the claim.
    let mut received = m.server.shares_for(0);
    let a = received.iter().position(|e| e.from == 1).unwrap();
    let b = received.iter().position(|e| e.from == 3).unwrap();
    let ct = received[a].ciphertext.clone();
    received[a].ciphertext = received[b].ciphertext.clone();
    received[b].ciphertext = ct;
    assert!(matches!(
        m.clients[0].mask(&[0; 16], &received),
        Err(SecAggError::DecryptionFailed { from: 1 })
    ));
    // The failures changed nothing: the genuine shares still work.
    let y = m.clients[0]
        .mask(&[0; 16], &m.server.shares_for(0))
        .unwrap();
    assert_eq!(y.len(), 16);
}

#[test]
fn shares_replayed_into_another_session_fail_to_decrypt() {
    // The same randomness (hence the same keys) in two sessions: only the
    // session bytes differ, and they are bound into key and AAD.
    let mut a = Manual::new(4, 3, 0.6, b"job/7/round/1/attempt/0", 11);
    let mut b = Manual::new(4, 3, 0.6, b"job/7/round/1/attempt/1", 11);
    assert_eq!(a.server.adverts_for(1), b.server.adverts_for(1));
    a.share();
    b.share();
    let from_a = a.server.shares_for(0);
    assert!(matches!(
        b.clients[0].mask(&[0; 16], &from_a),
        Err(SecAggError::DecryptionFailed { .. })
    ));
    b.clients[0]
        .mask(&[0; 16], &b.server.shares_for(0))
        .unwrap();
}

#[test]
fn masked_vector_alone_looks_random() {
    let mut m = Manual::new(3, 2, 0.6, b"zeros", 6);
    m.share();
    let y = m.mask_all(&[0; 16]);
    for v in &y {
        let nonzero = v.iter().filter(|&&x| x != 0).count();
        assert!(nonzero >= 15, "{v:?}");
    }
    assert_ne!(y[0], y[1]);
    // A longer vector: masked zeros are spread over the whole range.
    let (params, k) = Params::from_fractions(2, 2, 1.0, 32).unwrap();
    let graph = neighbourhoods(2, k, &[0; 32]);
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let (mut c0, ad0) =
        ClientRound::new(b"s", params.clone(), 0, graph[0].clone(), &mut rng).unwrap();
    let (mut c1, ad1) = ClientRound::new(b"s", params, 1, graph[1].clone(), &mut rng).unwrap();
    let to1 = c0.share_keys(&[(1, ad1)].into(), &mut rng).unwrap();
    let _to0 = c1.share_keys(&[(0, ad0)].into(), &mut rng).unwrap();
    let y = c1.mask(&vec![0; 10_000], &to1).unwrap();
    let nonzero = y.iter().filter(|&&x| x != 0).count();
    assert!(nonzero > 9_990);
    let high = y.iter().filter(|&&x| x >= 1 << 31).count();
    assert!((4_700..5_300).contains(&high), "{high}");
}

#[test]
fn client_rejects_bad_adverts() {
    let (params, k) = Params::from_fractions(4, 3, 0.6, 32).unwrap();
    let graph = neighbourhoods(4, k, &[1; 32]);
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let mut made: Vec<(ClientRound, Advertisement)> = (0..4)
        .map(|u| {
            ClientRound::new(b"s", params.clone(), u, graph[u as usize].clone(), &mut rng).unwrap()
        })
        .collect();
    let ads: Vec<Advertisement> = made.iter().map(|(_, a)| a.clone()).collect();
    let c = &mut made[0].0;
    // Non-neighbour (itself).
    let mut adverts: BTreeMap<ClientId, Advertisement> = [(0, ads[0].clone())].into();
    assert!(matches!(
        c.share_keys(&adverts, &mut rng),
        Err(SecAggError::NotANeighbour { client: 0, of: 0 })
    ));
    // Too few.
    adverts = [(1, ads[1].clone())].into();
    assert!(matches!(
        c.share_keys(&adverts, &mut rng),
        Err(SecAggError::TooFewNeighbours {
            stage: "advertise",
            have: 2,
            need: 3
        })
    ));
    // Duplicated key (a neighbour replaying my key, or two sharing one).
    adverts = [(1, ads[1].clone()), (2, ads[1].clone())].into();
    assert!(matches!(
        c.share_keys(&adverts, &mut rng),
        Err(SecAggError::DuplicateKey { client: 2 })
    ));
    adverts = [(1, ads[1].clone()), (2, ads[0].clone())].into();
    assert!(matches!(
        c.share_keys(&adverts, &mut rng),
        Err(SecAggError::DuplicateKey { client: 2 })
    ));
    // Small-order key.
    let mut bad = ads[2].clone();
    bad.mask_pk = [0; 32];
    adverts = [(1, ads[1].clone()), (2, bad)].into();
    assert!(matches!(
        c.share_keys(&adverts, &mut rng),
        Err(SecAggError::InvalidKey {
            client: 2,
            which: "mask"
        })
    ));
    // Out-of-order calls.
    assert!(matches!(
        c.mask(&[0], &[]),
        Err(SecAggError::WrongStage { .. })
    ));
    assert!(matches!(
        c.unmask(&BTreeSet::new()),
        Err(SecAggError::WrongStage { .. })
    ));
    // After all that, the honest adverts still work, once.
    adverts = (1..4).map(|v| (v, ads[v as usize].clone())).collect();
    assert_eq!(c.share_keys(&adverts, &mut rng).unwrap().len(), 3);
    assert!(matches!(
        c.share_keys(&adverts, &mut rng),
        Err(SecAggError::WrongStage { .. })
    ));
    // Input out of range.
    assert!(matches!(
        c.mask(&[1 << 32], &[]),
        Err(SecAggError::ValueOutOfRange { index: 0, .. })
    ));
}

#[test]
fn server_checks_addressing_and_stages() {
    let mut m = Manual::new(5, 4, 0.6, b"server", 13);
    // Early messages: a stage opens only once the previous one's outcome
    // has been handed out.
    assert!(matches!(
        m.server.shares_sent(0, vec![]),
        Err(SecAggError::WrongStage {
            call: "shares_sent",
            ..
        })
    ));
    assert!(matches!(
        m.server.masked_input(0, vec![0; 16]),
        Err(SecAggError::WrongStage {
            call: "masked_input",
            ..
        })
    ));
    assert!(matches!(
        m.server.reveal(0, vec![]),
        Err(SecAggError::WrongStage { call: "reveal", .. })
    ));
    // Duplicate advertisement; key reuse across clients.
    let ad0 = m.server.adverts_for(1)[&0].clone();
    assert!(matches!(
        m.server.advertised(0, ad0.clone()),
        Err(SecAggError::WrongStage { .. })
    ));
    let mut batches = Vec::new();
    for u in 0..5 {
        let adverts = m.server.adverts_for(u);
        batches.push(
            m.clients[u as usize]
                .share_keys(&adverts, &mut m.rng)
                .unwrap(),
        );
    }
    // From mismatch, missing recipient, duplicate recipient, bad length.
    let mut b = batches[0].clone();
    b[0].from = 3;
    assert!(matches!(
        m.server.shares_sent(0, b),
        Err(SecAggError::Malformed(_))
    ));
    let mut b = batches[0].clone();
    b.pop();
    assert!(matches!(
        m.server.shares_sent(0, b),
        Err(SecAggError::Malformed(_))
    ));
    let mut b = batches[0].clone();
    b[1] = b[0].clone();
    assert!(matches!(
        m.server.shares_sent(0, b),
        Err(SecAggError::Malformed(_))
    ));
    let mut b = batches[0].clone();
    b[0].ciphertext.push(0);
    assert!(matches!(
        m.server.shares_sent(0, b),
        Err(SecAggError::Malformed(_))
    ));
    let mut b = batches[0].clone();
    b[0].to = 0;
    assert!(matches!(
        m.server.shares_sent(0, b),
        Err(SecAggError::NotANeighbour { client: 0, of: 0 })
    ));
    for (u, b) in batches.into_iter().enumerate() {
        m.server.shares_sent(u as ClientId, b).unwrap();
    }
    assert_eq!(m.server.share_senders().len(), 5);
    let _ = m.server.shares_for(0);
    assert!(matches!(
        m.server.masked_input(0, vec![0; 15]),
        Err(SecAggError::WrongLength {
            expected: 16,
            got: 15
        })
    ));
    assert!(matches!(
        m.server.masked_input(0, vec![1 << 40; 16]),
        Err(SecAggError::ValueOutOfRange { .. })
    ));
    // Invalid graphs are reported.
    let p = m.params.clone();
    assert!(ServerRound::try_new(b"x", p.clone(), vec![vec![1], vec![]], 1).is_err());
    assert!(ServerRound::try_new(b"x", p.clone(), vec![vec![0]], 1).is_err());
    let mut bad = ServerRound::new(b"x", p, vec![vec![1, 1], vec![0]], 1);
    assert!(matches!(
        bad.advertised(0, ad0),
        Err(SecAggError::Malformed(_))
    ));
    let _ = &m.session;
}

#[test]
fn wire_encodings_round_trip_and_reject_garbage() {
    let mut m = Manual::new(4, 3, 0.6, b"wire", 14);
    let ad = m.server.adverts_for(0)[&1].clone();
    let bytes = ad.to_bytes();
    assert_eq!(Advertisement::from_bytes(&bytes).unwrap(), ad);
    assert!(Advertisement::from_bytes(&bytes[..64]).is_err());
    let mut v = bytes.clone();
    v[0] = 9;
    assert!(
        Advertisement::from_bytes(&v)
            .unwrap_err()
            .to_string()
            .contains("version")
    );
    let mut v = bytes.clone();
    v[33..].fill(0);
    assert!(
        Advertisement::from_bytes(&v)
            .unwrap_err()
            .to_string()
            .contains("mask")
    );
    let st = ad.statement(b"job/1", 1);
    assert_ne!(st, ad.statement(b"job/2", 1));
    assert_ne!(st, ad.statement(b"job/1", 2));

    let batches = m.share();
    let enc = encode_shares(&batches[0]);
    let dec = decode_shares(&enc).unwrap();
    assert_eq!(dec, batches[0]);
    assert!(decode_shares(&[]).is_err());
    assert!(
        decode_shares(&[1, 255, 255, 255, 255])
            .unwrap_err()
            .to_string()
            .contains("declares")
    );
    let mut trailing = enc.clone();
    trailing.push(0);
    assert!(
        decode_shares(&trailing)
            .unwrap_err()
            .to_string()
            .contains("trailing")
    );
    for cut in 0..enc.len() {
        assert!(decode_shares(&enc[..cut]).is_err());
    }

    let ys = m.mask_all(&[3; 16]);
    assert_eq!(ys.len(), 4);
    let survivors = m.server.survivors();
    let reveals = m.clients[0].unmask(&survivors).unwrap();
    let enc = encode_reveals(&reveals);
    let dec = decode_reveals(&enc).unwrap();
    assert_eq!(dec, reveals);
    for cut in 0..enc.len() {
        assert!(decode_reveals(&enc[..cut]).is_err());
    }
    let mut bad_kind = enc.clone();
    bad_kind[5] = 7;
    assert!(
        decode_reveals(&bad_kind)
            .unwrap_err()
            .to_string()
            .contains("kind")
    );
    let mut noncanonical = enc.clone();
    noncanonical[5 + 1 + 4 + 4 + 31] = 0xff;
    assert!(decode_reveals(&noncanonical).is_err());

    // Random bytes never panic.
    let mut rng = ChaCha20Rng::seed_from_u64(15);
    for len in 0..300 {
        let mut junk = vec![0u8; len];
        rng.fill_bytes(&mut junk);
        if len > 0 {
            junk[0] = 1;
        }
        let _ = decode_shares(&junk);
        let _ = decode_reveals(&junk);
        let _ = Advertisement::from_bytes(&junk);
    }
}

#[test]
#[ignore = "larger sizes; run with --release -- --ignored"]
fn larger_rounds() {
    // 10% dropouts: k must leave t reachable in every neighbourhood (with
    // k = 10, t = 7, four dropouts among some client's ten neighbours are
    // likely among 1000 clients and the round aborts, as it should).
    for (clients, k, len) in [(50, 49, 10_000), (200, 16, 10_000), (1000, 40, 100)] {
        let mut s = sim(clients, k, 2.0 / 3.0, 32);
        s.input_len = len;
        s.drop_after_sharing = (0..clients / 20).map(|i| i * 7 % clients).collect();
        s.drop_after_masking = (0..clients / 20).map(|i| (i * 11 + 3) % clients).collect();
        let r = s.run();
        match &r.sum {
            Ok(sum) => assert_eq!(*sum, r.expected),
            Err(e) => panic!("clients={clients} k={k}: {e}"),
        }
        eprintln!(
            "clients={clients} k={k} len={len}: client mean {:.3}s max {:.3}s, server {:.3}s, up {:.0} B, down {:.0} B",
            r.client_secs_mean,
            r.client_secs_max,
            r.server_secs,
            r.bytes_up_per_client_mean,
            r.bytes_down_per_client_mean
        );
    }
}

/// Committed inputs (proofs under secure aggregation): the blindings are the
/// masks over the group order, so the survivors' blindings minus what the
/// server reconstructs cancel exactly, also when a client drops after
/// sharing (its pairwise masks with the survivors are removed) — and a
/// single client's blinding is not what the server can compute.
#[test]
fn committed_blindings_cancel_in_the_survivors_sum() {
    use curve25519_dalek::scalar::Scalar;
    let mut m = Manual::new(6, 5, 0.8, b"job/1/round/4", 11);
    m.share();
    let mut total = vec![Scalar::ZERO; 16];
    let mut first = Vec::new();
    for u in 0..5u32 {
        let received = m.server.shares_for(u);
        let r = m.clients[u as usize].blindings(16, &received).unwrap();
        m.server.committed_input(u, 16).unwrap();
        for (t, r) in total.iter_mut().zip(&r) {
            *t += r;
        }
        if u == 0 {
            first = r;
        }
    }
    assert!(matches!(
        m.server.committed_input(0, 16),
        Err(SecAggError::Duplicate { .. })
    ));
    let survivors = m.server.survivors();
    assert_eq!(survivors.len(), 5);
    for u in 0..5u32 {
        let reveals = m.clients[u as usize].unmask(&survivors).unwrap();
        m.server.reveal(u, reveals).unwrap();
    }
    let residual = m.server.finish_blindings().unwrap();
    assert_eq!(residual, total);
    assert_ne!(residual, first);
}
