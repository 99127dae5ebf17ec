package kmstest

// AddSecp256k1ConsensusKey is AddSecp256k1Key for the consensus-key tests,
// which want the 33-byte compressed public key a validator announces.
func (s *Server) AddSecp256k1ConsensusKey(alias string) (keyID string, pub []byte) {
	id, pk := s.AddSecp256k1Key(alias)
	return id, pk.SerializeCompressed()
}
