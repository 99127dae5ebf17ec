package transport

import (
	"testing"

	"github.com/cometbft/cometbft/crypto"
	"github.com/cometbft/cometbft/crypto/ed25519"
	cryptoenc "github.com/cometbft/cometbft/crypto/encoding"
	"github.com/cometbft/cometbft/crypto/mldsa65"
	"github.com/cometbft/cometbft/crypto/secp256k1"
	"github.com/cometbft/cometbft/crypto/secp256k1eth"
	privvalproto "github.com/cometbft/cometbft/proto/tendermint/privval"
	"github.com/cosmos/gogoproto/proto"
)

// The public key of every consensus key type reaches the node as the node
// decodes it: on the v0.38 line (v0.38 to v0.40) as tendermint.crypto.PublicKey,
// on the v1 line as a type name and bytes. (CarriesKey keeps the types a
// line's node cannot read out of kms.yaml.)
func TestPubKeyResponseOfEveryKeyType(t *testing.T) {
	ml, err := mldsa65.GenPrivKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, pub := range []crypto.PubKey{ed25519.GenPrivKey().PubKey(), secp256k1.GenPrivKey().PubKey(),
		secp256k1eth.GenPrivKey().PubKey(), ml.PubKey()} {
		t.Run(pub.Type(), func(t *testing.T) {
			pp, err := cryptoenc.PubKeyToProto(pub)
			if err != nil {
				t.Fatal(err)
			}
			resp := privvalproto.Message{Sum: &privvalproto.Message_PubKeyResponse{PubKeyResponse: &privvalproto.PubKeyResponse{PubKey: pp}}}

			m, err := v038Codec{}.encode(resp)
			if err != nil {
				t.Fatal(err)
			}
			wire, err := proto.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			var back privvalproto.Message
			if err := proto.Unmarshal(wire, &back); err != nil {
				t.Fatal(err)
			}
			got, err := cryptoenc.PubKeyFromProto(back.GetPubKeyResponse().PubKey)
			if err != nil || !got.Equals(pub) {
				t.Fatalf("v0.38 line: node reads %v, %v; want %v", got, err, pub)
			}

			v1 := pubKeyResponseV1(resp.GetPubKeyResponse())
			if v1.Error != nil {
				t.Fatalf("v1 line: %v", v1.Error)
			}
			got, err = cryptoenc.PubKeyFromTypeAndBytes(v1.PubKeyType, v1.PubKeyBytes)
			if err != nil || !got.Equals(pub) {
				t.Fatalf("v1 line: node reads %v, %v; want %v", got, err, pub)
			}
		})
	}
	for _, p := range []Protocol{ProtocolV034, ProtocolV037, ProtocolV1} {
		if CarriesKey(p, "mldsa65") || CarriesKey(p, "secp256k1eth") || !CarriesKey(p, "secp256k1") {
			t.Errorf("line %s: mldsa65 and secp256k1eth are not carried, secp256k1 is", p)
		}
	}
	if !CarriesKey(ProtocolV038, "mldsa65") || !CarriesKey(ProtocolV038, "secp256k1eth") {
		t.Error("the v0.38 line (CometBFT v0.40) carries every type")
	}
}
