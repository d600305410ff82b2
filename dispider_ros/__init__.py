"""dispider_ros: an active, real-time video assistant for ROS 2.

Perception, decision and reaction are separate parts (Dispider); the reaction keeps a
compressed memory of frames and dialogue (StreamBridge); generation never blocks
perception (MOSS-Video-Preview).
"""
import pkgutil

# The generated `dispider_ros.msg` lives in the installed copy of this package; when the
# source folder shadows it (running from the repository root) extend the search path.
__path__ = pkgutil.extend_path(__path__, __name__)

__version__ = "0.1.0"
