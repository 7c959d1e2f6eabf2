package ctl

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/opendmvpn/dmvpn/ctl/nhrpcap"
	"github.com/opendmvpn/dmvpn/ctl/nhrpview"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

func newDecodeCmd() *cobra.Command {
	var text bool
	cmd := &cobra.Command{
		Use:   "decode FILE",
		Short: "Decode the NHRP packets of a pcap or pcapng capture",
		Long: `Decode reads a pcap or pcapng capture (Ethernet with or without VLAN tags,
Linux cooked capture, raw IP), finds GRE carrying NHRP (protocol 0x2001) and
prints each NHRP packet as one JSON object per line, or readably with --text.
A packet that does not decode is printed with an "error" key. Other traffic
is skipped.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			return decodeCapture(f, cmd.OutOrStdout(), cmd.ErrOrStderr(), text)
		},
	}
	cmd.Flags().BoolVar(&text, "text", false, "print a readable form instead of JSON")
	return cmd
}

func decodeCapture(r io.Reader, stdout, stderr io.Writer, text bool) error {
	w := bufio.NewWriter(stdout)
	defer w.Flush()
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	var p wire.Packet
	st, err := nhrpcap.Scan(r, func(f *nhrpcap.Frame) error {
		derr := p.UnmarshalBinary(f.NHRP)
		if text {
			fmt.Fprintf(w, "frame %d: %s -> %s GRE", f.Number, f.OuterSrc, f.OuterDst)
			if f.KeyPresent {
				fmt.Fprintf(w, " key %d", f.Key)
			}
			if derr != nil {
				fmt.Fprintf(w, ", NHRP (%d bytes) does not decode: %v\n", len(f.NHRP), derr)
				return nil
			}
			fmt.Fprintf(w, ", NHRP %d bytes\n%s", len(f.NHRP), nhrpview.Text(&p))
			return nil
		}
		var v nhrpview.Packet
		if derr != nil {
			v = nhrpview.FromError(derr)
		} else {
			v = nhrpview.FromPacket(&p, f.NHRP)
		}
		v.Frame = f.Number
		v.Time = f.Time.UTC().Format("2006-01-02T15:04:05.000000Z")
		v.OuterSrc, v.OuterDst = f.OuterSrc.String(), f.OuterDst.String()
		if f.KeyPresent {
			v.GREKey = &f.Key
		}
		return enc.Encode(v)
	})
	if text && err == nil {
		fmt.Fprintf(w, "%d frames, %d NHRP packets, %d other frames skipped\n", st.Frames, st.NHRP, st.Skipped)
	}
	return err
}
