"""Protocol tests against a real spoad: handshake, NOTIFY/ACK, pipelining, fragments, errors."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import spop  # noqa: E402


class Protocol(unittest.TestCase):
    def setUp(self):
        self.env = harness.Env("protocol")
        self.port = harness.free_port()
        cfg = self.env.write("spoad.yaml", """
agents:
  - name: echo
    type: echo
    listen: 127.0.0.1:%d
""" % self.port)
        self.spoad = self.env.spoad(cfg)
        self.assertTrue(harness.wait_for(lambda: harness.port_open(self.port)), self.env.dump_logs())

    def tearDown(self):
        self.env.stop()

    def test_hello_notify_ack(self):
        c = spop.Client(("127.0.0.1", self.port))
        h = c.handshake(max_frame_size=16380, capabilities="pipelining,async").kv()
        self.assertEqual(h["version"], "2.0")
        self.assertEqual(h["max-frame-size"], 16380)
        self.assertIn("pipelining", h["capabilities"].split(","))
        c.send(spop.notify(3, 1, [("check", [("ip", spop.Typed(spop.T_IPV4, "192.0.2.1"))])]))
        f = c.recv_frame()
        self.assertEqual((f.type, f.sid, f.fid, f.flags), (spop.ACK, 3, 1, spop.FIN))
        self.assertEqual(f.actions()["txn.ip"], "192.0.2.1")


if __name__ == "__main__":
    unittest.main(verbosity=2)
