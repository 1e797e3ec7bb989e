"""Other libraries' ANN-to-SNN conversions of our models, for comparisons on the same network and data.

* :mod:`.spikingjelly` -- SpikingJelly 2.0 (optional: ``pip install -e ".[compare]"``, imported only
  when one of its adapters is used): its ``STBIFNode`` (SpikeZIP's ST-BIF) simulating one of our
  quantized ANNs, its rate-coding conversion of a float ANN, and the float twin of a quantized ANN;
  :class:`~fastsnn.peers.spikingjelly.PeerSNN` gives each our ``SpikingModel``'s call signature.
"""
